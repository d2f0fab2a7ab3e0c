"""PriceSource: daily OHLCV candles per asset, from a file export, CoinGecko or Binance.

Live sources get their HTTP client (:class:`tasks.clients.pacing.PacedJsonGet`: own rate limit,
retries with backoff) from :func:`build_price_source`; a bad symbol, coin id or key ends in one
:class:`PriceSourceError` line that names the setting to fix and holds no secret.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from tasks.clients.pacing import HttpGiveUp, PacedJsonGet
from tasks.core.errors import PriceSourceError
from tasks.core.schemas import PRICES


class PriceSource(Protocol):
    name: str

    def fetch_daily(self, asset: str, start: date, end: date) -> pl.DataFrame:
        """Daily candles of ``asset`` in USD for UTC days start..end, in the PRICES shape."""
        ...


class CsvPriceSource:
    """Candles from ``<dir>/<asset>_usd_daily.csv`` or ``.parquet`` (columns date, open, high, low,
    close, volume[, source]) - the bundled sample, or an export for backfills."""

    name = "file"

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, asset: str) -> Path:
        stem = self.directory / f"{asset.lower()}_usd_daily"
        parquet = stem.with_suffix(".parquet")
        return parquet if parquet.is_file() else stem.with_suffix(".csv")

    def fetch_daily(self, asset: str, start: date, end: date) -> pl.DataFrame:
        path = self.path(asset)
        if not path.is_file():
            raise PriceSourceError(f"prices.file_dir: no candles for {asset} (expected {path} or .parquet)")
        try:
            if path.suffix == ".parquet":
                raw = pl.read_parquet(path).with_columns(pl.col("date").cast(pl.String))
            else:
                raw = pl.read_csv(path, try_parse_dates=False, infer_schema_length=0)
            frame = raw.select(
                pl.col("date").str.slice(0, 10).str.to_date("%Y-%m-%d"),
                pl.lit(asset.upper()).alias("asset"),
                *(pl.col(c).cast(pl.Float64).alias(f"{c}_usd") for c in ("open", "high", "low", "close")),
                pl.col("volume").cast(pl.Float64).alias("volume_base"),
                (pl.col("source").cast(pl.String) if "source" in raw.columns else pl.lit(f"file:{path.name}")).alias("source"),
            )
        except (pl.exceptions.PolarsError, KeyError, OSError) as exc:
            raise PriceSourceError(f"{path}: malformed candle file ({str(exc).splitlines()[0][:160]})") from None
        return frame.filter(pl.col("date").is_between(start, end)).sort("date").select(list(PRICES))


# ----------------------------------------------------------------------------- live APIs
DAY_MS = 86_400_000


def _utc_ms(day: date) -> int:
    return int(datetime.combine(day, time(0), tzinfo=UTC).timestamp() * 1000)


def _first_line(text: object, width: int = 160) -> str:
    s = str(text).strip().splitlines()
    return s[0][:width] if s else ""


def build_daily_ohlc(points: pl.LazyFrame, asset: str, source: str) -> pl.LazyFrame:
    """Timestamped prices (``ts_ms``, ``price_usd``, ``volume_base``) -> one OHLCV row per UTC day.

    Open/close are the first/last point of the day, high/low the extremes of the points seen,
    volume the sum of the points' volumes. Pure: no IO, no clock.
    """
    return (
        points.with_columns(pl.from_epoch("ts_ms", time_unit="ms").dt.date().alias("date"))
        .sort("ts_ms")
        .group_by("date")
        .agg(
            pl.col("open_usd").first(), pl.col("high_usd").max(), pl.col("low_usd").min(),
            pl.col("close_usd").last(), pl.col("volume_base").sum(), pl.len().alias("points"),
        )
        .with_columns(pl.lit(asset.upper()).alias("asset"), pl.lit(source).alias("source"))
        .sort("date")
    )


class CoinGeckoPriceSource:
    """CoinGecko ``/coins/{id}/market_chart/range`` (vs USD), one request per window of days.

    CoinGecko returns hourly points for a 2..90-day range (daily ones beyond), so windows of at
    most 90 days give each UTC day ~24 points: OHLC is built from them (high/low are the extremes of
    hourly samples, not of trades). ``total_volumes`` is a rolling 24 h volume in USD: the day's
    last value divided by its close gives ``volume_base`` (an approximation, said in ``source``).
    """

    name = "coingecko"

    def __init__(self, http: PacedJsonGet, ids: dict[str, str], window_days: int = 90):
        self.http = http
        self.ids = {k.upper(): v for k, v in ids.items()}
        self.window_days = window_days

    def fetch_daily(self, asset: str, start: date, end: date) -> pl.DataFrame:
        coin = self.ids.get(asset.upper())
        if coin is None:
            raise PriceSourceError(f"coingecko: no coin id for {asset} - add it to prices.coingecko_ids "
                                   f"(e.g. {{\"{asset.upper()}\": \"<coin id>\"}})")
        frames = []
        lo = start
        while lo <= end:
            hi = min(end, lo + timedelta(days=self.window_days - 1))
            frames.append(self._window(asset, coin, lo, hi))
            lo = hi + timedelta(days=1)
        out = pl.concat(frames) if frames else pl.DataFrame(schema=PRICES)
        return out.filter(pl.col("date").is_between(start, end)).unique("date", keep="last").sort("date").select(list(PRICES))

    def _window(self, asset: str, coin: str, lo: date, hi: date) -> pl.DataFrame:
        params = {"vs_currency": "usd", "from": _utc_ms(lo) // 1000, "to": (_utc_ms(hi) + DAY_MS) // 1000 - 1}
        try:
            ans = self.http.get(f"/coins/{coin}/market_chart/range", params)
        except HttpGiveUp as exc:
            raise PriceSourceError(str(exc)) from None
        body = ans.body
        if ans.status in (401, 403):
            raise PriceSourceError(f"coingecko: HTTP {ans.status}, key or plan refused ({self.http.scrub(_first_line(body))}) - "
                                   "check prices.coingecko_api_key and prices.coingecko_key_kind")
        if ans.status == 404:
            raise PriceSourceError(f"coingecko: unknown coin id {coin!r} for {asset} - fix prices.coingecko_ids")
        if ans.status >= 400:
            raise PriceSourceError(f"coingecko: HTTP {ans.status} for {asset}: {self.http.scrub(_first_line(body))}")
        try:
            prices = pl.DataFrame(body["prices"], schema=["ts_ms", "price_usd"], orient="row")
            vols = pl.DataFrame(body["total_volumes"], schema=["ts_ms", "volume_usd_24h"], orient="row")
            points = prices.cast({"ts_ms": pl.Int64, "price_usd": pl.Float64}).join(
                vols.cast({"ts_ms": pl.Int64, "volume_usd_24h": pl.Float64}), on="ts_ms", how="left")
        except (KeyError, TypeError, pl.exceptions.PolarsError) as exc:
            raise PriceSourceError(f"coingecko: malformed market_chart body for {asset} "
                                   f"({type(exc).__name__}: {_first_line(exc, 100)})") from None
        if points.is_empty():
            return pl.DataFrame(schema=PRICES)
        daily = build_daily_ohlc(
            points.lazy().select("ts_ms", *(pl.col("price_usd").alias(c) for c in ("open_usd", "high_usd", "low_usd", "close_usd")),
                                 pl.lit(0.0).alias("volume_base")),
            asset, "coingecko:market_chart_range(volume=24h_usd/close)",
        )
        last_volume = (points.lazy().with_columns(pl.from_epoch("ts_ms", time_unit="ms").dt.date().alias("date"))
                       .sort("ts_ms").group_by("date").agg(pl.col("volume_usd_24h").last()))
        return (daily.join(last_volume, on="date", how="left")
                .with_columns((pl.col("volume_usd_24h") / pl.col("close_usd")).alias("volume_base"))
                .select(list(PRICES)).collect())


KLINE_COLUMNS = ["open_time_ms", "open", "high", "low", "close", "volume", "close_time_ms"]


class BinancePriceSource:
    """Binance spot ``/api/v3/klines`` (``<ASSET><quote>``), paginated by 1,000 candles.

    A candle whose close time is still in the future is dropped (it is not final). With
    ``interval="1h"`` the hourly candles are rolled up to UTC days, and only days with all 24
    hours are kept (a partial day is a gap, not a candle).
    """

    name = "binance"
    PAGE = 1000

    def __init__(self, http: PacedJsonGet, quote: str = "USDT", interval: str = "1d",
                 now_ms: Callable[[], int] | None = None):
        self.http = http
        self.quote = quote.upper()
        self.interval = interval
        self._now_ms = now_ms or (lambda: int(_time.time() * 1000))

    def fetch_daily(self, asset: str, start: date, end: date) -> pl.DataFrame:
        symbol = f"{asset.upper()}{self.quote}"
        step_ms = DAY_MS if self.interval == "1d" else 3_600_000
        cursor, stop = _utc_ms(start), _utc_ms(end) + DAY_MS - 1
        rows: list[list] = []
        while cursor <= stop:
            params = {"symbol": symbol, "interval": self.interval, "startTime": cursor, "endTime": stop, "limit": self.PAGE}
            try:
                ans = self.http.get("/api/v3/klines", params)
            except HttpGiveUp as exc:
                raise PriceSourceError(str(exc)) from None
            if ans.status >= 400:
                msg = ans.body.get("msg") if isinstance(ans.body, dict) else _first_line(ans.body)
                unknown_symbol = isinstance(ans.body, dict) and ans.body.get("code") == -1121
                hint = " - check prices.assets and prices.binance_quote" if unknown_symbol else ""
                raise PriceSourceError(f"binance: {symbol}: HTTP {ans.status}: {msg}{hint}")
            page = ans.body
            if not isinstance(page, list) or any(not isinstance(k, list) or len(k) < 7 for k in page):
                raise PriceSourceError(f"binance: {symbol}: malformed klines body (expected a list of candles)")
            rows.extend(k[:7] for k in page)
            if len(page) < self.PAGE:
                break
            cursor = int(page[-1][0]) + step_ms
        try:
            raw = pl.DataFrame(rows, schema=KLINE_COLUMNS, orient="row") if rows else pl.DataFrame(
                schema=dict.fromkeys(KLINE_COLUMNS, pl.String))
            candles = raw.lazy().select(
                pl.col("open_time_ms").cast(pl.Int64).alias("ts_ms"),
                *(pl.col(c).cast(pl.String).cast(pl.Float64).alias(f"{c}_usd") for c in ("open", "high", "low", "close")),
                pl.col("volume").cast(pl.String).cast(pl.Float64).alias("volume_base"),
                pl.col("close_time_ms").cast(pl.Int64),
            ).filter(pl.col("close_time_ms") < self._now_ms()).drop("close_time_ms").unique("ts_ms")
        except pl.exceptions.PolarsError as exc:
            raise PriceSourceError(f"binance: {symbol}: malformed candle values ({_first_line(exc, 100)})") from None
        source = f"binance:{symbol}:{self.interval}"
        daily = build_daily_ohlc(candles, asset, source)
        if self.interval == "1h":
            daily = daily.filter(pl.col("points") == 24)
        return daily.filter(pl.col("date").is_between(start, end)).select(list(PRICES)).collect()


def build_price_source(prices: Any) -> PriceSource:
    """The price source named by ``prices.source`` (settings section), with its own pacing."""
    if prices.source == "file":
        return CsvPriceSource(prices.file_dir)
    common = dict(timeout_s=prices.timeout_s, max_retries=prices.max_retries,
                  backoff_initial_s=prices.backoff_initial_s, backoff_max_s=prices.backoff_max_s,
                  concurrency_limit=prices.concurrency_limit)
    if prices.source == "coingecko":
        key = prices.coingecko_api_key.get_secret_value() if prices.coingecko_api_key else None
        headers = {f"x-cg-{prices.coingecko_key_kind}-api-key": key} if key else {}
        http = PacedJsonGet("coingecko", prices.coingecko_url, requests_per_second=prices.coingecko_requests_per_second,
                            headers=headers, secrets=(key,) if key else (), **common)
        return CoinGeckoPriceSource(http, prices.coingecko_ids, prices.coingecko_window_days)
    if prices.source == "binance":
        http = PacedJsonGet("binance", prices.binance_url, requests_per_second=prices.binance_requests_per_second, **common)
        return BinancePriceSource(http, prices.binance_quote, prices.binance_interval)
    raise PriceSourceError(f"prices.source: unknown source {prices.source!r} (file, coingecko, binance)")
