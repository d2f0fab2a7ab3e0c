"""Live price sources (CoinGecko, Binance) against a local replay server: real clients, real
pacing and retries, real flow. Bodies are synthetic shapes carrying the real sample candles."""

from datetime import date

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows.ingest_prices import ingest_prices
from tasks.clients.pacing import PacedJsonGet
from tasks.clients.prices import (
    BinancePriceSource,
    CoinGeckoPriceSource,
    CsvPriceSource,
    PriceSourceError,
    build_daily_ohlc,
    build_price_source,
)
from tasks.core.schemas import PRICES
from tasks.core.settings import SAMPLE_DIR, load_settings
from tasks.core.storage import Lake
from tests.http_replay import HttpReplay, binance_route, coingecko_route

START, END = date(2021, 1, 1), date(2021, 1, 10)
FAST = dict(requests_per_second=1000, timeout_s=0.5, max_retries=3, backoff_initial_s=0.01, backoff_max_s=0.05)


def real(asset):
    return CsvPriceSource(SAMPLE_DIR / "prices").fetch_daily(asset, START, END).drop("source")


def binance(server, **kw):
    return BinancePriceSource(PacedJsonGet("binance", server.url, **{**FAST, **kw}))


def coingecko(server, key=None, **kw):
    headers = {"x-cg-demo-api-key": key} if key else {}
    return CoinGeckoPriceSource(PacedJsonGet("coingecko", server.url + "/api/v3", headers=headers,
                                             secrets=(key,) if key else (), **{**FAST, **kw}),
                                {"ETH": "ethereum", "BTC": "bitcoin", "DOGE": "dogecoin"})


def test_binance_klines_are_the_real_candles_and_paginate():
    with HttpReplay({"/api/v3/klines": binance_route}) as server:
        src = binance(server)
        src.PAGE = 4  # force three pages for ten days
        df = src.fetch_daily("ETH", START, END)
    assert df.schema == PRICES and df["source"].unique().to_list() == ["binance:ETHUSDT:1d"]
    assert_frame_equal(df.drop("source"), real("ETH"))
    pages = [r for r in server.requests if r["path"] == "/api/v3/klines"]
    assert len(pages) == 3 and pages[1]["query"]["startTime"] == str(int(pages[0]["query"]["startTime"]) + 4 * 86_400_000)


def test_coingecko_points_become_daily_ohlcv_with_the_key_header():
    with HttpReplay({"/api/v3/coins/": coingecko_route(key="cg-demo-secret")}) as server:
        df = coingecko(server, key="cg-demo-secret", requests_per_second=1000).fetch_daily("ETH", START, END)
    assert df.schema == PRICES and df.height == 10
    # open/high/low/close are the real candle's; volume_base = 24h USD volume / close (exact here)
    assert_frame_equal(df.drop("source"), real("ETH"), check_exact=False, rel_tol=1e-9)
    assert all(r["headers"]["x-cg-demo-api-key"] == "cg-demo-secret" for r in server.requests)


def test_coingecko_windows_split_a_long_range():
    with HttpReplay({"/api/v3/coins/": coingecko_route()}) as server:
        src = coingecko(server)
        src.window_days = 3
        df = src.fetch_daily("BTC", START, END)
    assert len(server.requests) == 4  # 3 + 3 + 3 + 1 days
    assert df.height == 9 and date(2021, 1, 6) not in df["date"].to_list()  # the fixture's gap stays a gap


@pytest.mark.parametrize("faults", [["429", "500"], ["503", "malformed"], ["timeout", "502"], ["418"]])
def test_transient_faults_are_retried(faults):
    with HttpReplay({"/api/v3/klines": binance_route}, timeout_sleep_s=0.8) as server:
        server.faults.extend(faults)
        src = binance(server)
        df = src.fetch_daily("ETH", START, END)
    assert df.height == 10 and src.http.stats["retries"] == len(faults)


def test_retries_exhausted_is_one_line():
    with HttpReplay({"/api/v3/klines": binance_route}) as server:
        server.faults.extend(["500"] * 10)
        with pytest.raises(PriceSourceError) as err:
            binance(server, max_retries=2).fetch_daily("ETH", START, END)
    assert "gave up after 3 attempts (HTTP 500)" in str(err.value) and "\n" not in str(err.value)


def test_bad_symbol_bad_coin_and_bad_key_are_one_line_without_the_key():
    with HttpReplay({"/api/v3/klines": binance_route, "/api/v3/coins/": coingecko_route(key="right-key")}) as server:
        with pytest.raises(PriceSourceError, match=r"binance: NOPEUSDT: HTTP 400: Invalid symbol\. - check prices\.assets"):
            binance(server).fetch_daily("NOPE", START, END)
        with pytest.raises(PriceSourceError, match="unknown coin id 'dogecoin' for DOGE"):
            coingecko(server, key="right-key").fetch_daily("DOGE", START, END)
        with pytest.raises(PriceSourceError, match="no coin id for AAVE - add it to prices.coingecko_ids"):
            coingecko(server, key="right-key").fetch_daily("AAVE", START, END)
        with pytest.raises(PriceSourceError) as err:
            coingecko(server, key="wrong-key-123").fetch_daily("ETH", START, END)
    msg = str(err.value)
    assert "HTTP 401" in msg and "prices.coingecko_api_key" in msg and "wrong-key-123" not in msg and "\n" not in msg


def test_open_candle_is_dropped_and_hourly_rolls_up_to_full_days():
    # 1h candles: 24 of them for Jan 1 (built from nothing but arithmetic), 5 for Jan 2 (a partial day)
    hour = 3_600_000
    t0 = 1609459200000
    rows = [[t0 + i * hour, str(100 + i), str(101 + i), str(99 + i), str(100.5 + i), "2", t0 + (i + 1) * hour - 1]
            for i in range(29)]

    def route(path, q, h):
        return 200, [r for r in rows if int(q["startTime"]) <= r[0] <= int(q["endTime"])], {}

    with HttpReplay({"/api/v3/klines": route}) as server:
        src = BinancePriceSource(PacedJsonGet("binance", server.url, **FAST), interval="1h")
        df = src.fetch_daily("ETH", date(2021, 1, 1), date(2021, 1, 2))
        assert df.to_dicts() == [{"date": date(2021, 1, 1), "asset": "ETH", "open_usd": 100.0, "high_usd": 124.0,
                                  "low_usd": 99.0, "close_usd": 123.5, "volume_base": 48.0, "source": "binance:ETHUSDT:1h"}]
        daily = BinancePriceSource(PacedJsonGet("binance", server.url, **FAST), now_ms=lambda: t0 + 20 * hour)
    rows[:] = [[t0, "1", "2", "0.5", "1.5", "3", t0 + 86_400_000 - 1]]
    with HttpReplay({"/api/v3/klines": route}) as server:
        daily.http = PacedJsonGet("binance", server.url, **FAST)
        assert daily.fetch_daily("ETH", date(2021, 1, 1), date(2021, 1, 1)).is_empty()  # still open at "now"


def test_build_daily_ohlc_is_lazy_and_orders_by_time():
    pts = pl.LazyFrame({"ts_ms": [3, 1, 2], "open_usd": [3.0, 1.0, 2.0], "high_usd": [3.0, 1.0, 2.0],
                        "low_usd": [3.0, 1.0, 2.0], "close_usd": [3.0, 1.0, 2.0], "volume_base": [1.0, 1.0, 1.0]})
    out = build_daily_ohlc(pts, "eth", "t")
    assert isinstance(out, pl.LazyFrame)
    row = out.collect().row(0, named=True)
    assert (row["open_usd"], row["high_usd"], row["low_usd"], row["close_usd"], row["volume_base"]) == (1.0, 3.0, 1.0, 3.0, 3.0)


def test_rate_limit_paces_requests():
    with HttpReplay({"/api/v3/klines": binance_route}) as server:
        src = binance(server, requests_per_second=4)
        src.PAGE = 2  # five pages at 4/s: the bucket (4 tokens) must make the fifth wait
        src.fetch_daily("ETH", START, END)
    assert len(server.requests) == 5 and src.http.stats["waited_s"] > 0.1


def test_ingest_prices_flow_on_binance_reports_gaps_and_is_idempotent(monkeypatch, data_dir):
    with HttpReplay({"/api/v3/klines": binance_route}) as server:
        monkeypatch.setenv("CHAINSIGNAL_PRICES__SOURCE", "binance")
        monkeypatch.setenv("CHAINSIGNAL_PRICES__BINANCE_URL", server.url)
        monkeypatch.setenv("CHAINSIGNAL_PRICES__BINANCE_REQUESTS_PER_SECOND", "1000")
        first = ingest_prices(START, END)
        again = ingest_prices(START, END)
        lake = Lake(data_dir / "lake")
        assert not lake.is_complete("prices", date(2021, 1, 6))  # left open: the next run asks again
        monkeypatch.setenv("CHAINSIGNAL_PRICES__ACCEPT_GAPS", "true")
        accepted = ingest_prices(START, END)
    assert first["partitions_done"] == 9 and first["partitions_incomplete"] == 1 and first["source"] == "binance"
    assert first["gaps"] == 1 and first["first_gaps"] == "2021-01-06:BTC"
    assert again["partitions_skipped"] == 9 and again["partitions_incomplete"] == 1
    assert accepted["partitions_skipped"] == 9 and accepted["partitions_done"] == 1
    assert lake.manifest("prices", date(2021, 1, 6))["gaps"] == ["BTC"]
    stored = lake.scan("prices").collect().filter(pl.col("asset") == "ETH").sort("date")
    assert_frame_equal(stored.drop("source"), real("ETH"))


def test_price_source_setting_selects_and_secret_stays_hidden(monkeypatch):
    monkeypatch.setenv("CHAINSIGNAL_PRICES__SOURCE", "coingecko")
    monkeypatch.setenv("CHAINSIGNAL_PRICES__COINGECKO_API_KEY", "cg-very-secret")
    monkeypatch.setenv("CHAINSIGNAL_PRICES__COINGECKO_KEY_KIND", "pro")
    s = load_settings()
    src = build_price_source(s.prices)
    assert isinstance(src, CoinGeckoPriceSource) and src.http._session.headers["x-cg-pro-api-key"] == "cg-very-secret"
    assert "cg-very-secret" not in repr(s) and "cg-very-secret" not in str(s.flat_params())
    monkeypatch.setenv("CHAINSIGNAL_PRICES__SOURCE", "kraken")
    with pytest.raises(Exception, match="bad setting prices.source"):
        load_settings()


def test_shared_concurrency_limit_paces_through_the_prefect_server(monkeypatch, data_dir):
    """Workers sharing one key: every request takes a slot of a Prefect global concurrency limit
    (created by setup) on the real harness server; a missing limit is a one-line error."""
    from tasks.core.settings import load_settings
    from tasks.ops.orchestration import ensure_source_limits

    with HttpReplay({"/api/v3/klines": binance_route}) as server:
        missing = BinancePriceSource(PacedJsonGet("binance", server.url, concurrency_limit="chainsignal-nope", **FAST))
        with pytest.raises(PriceSourceError) as err:
            missing.fetch_daily("ETH", START, END)
        assert "chainsignal-nope" in str(err.value) and "\n" not in str(err.value)
        monkeypatch.setenv("CHAINSIGNAL_PRICES__SOURCE", "binance")
        monkeypatch.setenv("CHAINSIGNAL_PRICES__BINANCE_REQUESTS_PER_SECOND", "50")
        monkeypatch.setenv("CHAINSIGNAL_PRICES__CONCURRENCY_LIMIT", "chainsignal-binance-test")
        created = ensure_source_limits(load_settings())
        assert created == [{"name": "chainsignal-binance-test", "limit": 50, "slot_decay_per_second": 50.0}]
        shared = BinancePriceSource(PacedJsonGet("binance", server.url, concurrency_limit="chainsignal-binance-test", **FAST))
        assert_frame_equal(shared.fetch_daily("ETH", START, END).drop("source"), real("ETH"))


def test_parquet_export_is_read_like_the_csv(tmp_path):
    pl.read_csv(SAMPLE_DIR / "prices" / "eth_usd_daily.csv", try_parse_dates=True).write_parquet(tmp_path / "eth_usd_daily.parquet")
    got = CsvPriceSource(tmp_path).fetch_daily("ETH", START, END)
    assert_frame_equal(got.drop("source"), real("ETH"))
