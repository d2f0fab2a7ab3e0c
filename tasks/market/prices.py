"""Daily price candles into the lake: one partition per UTC day holding every configured asset.

Candles are checked before anything is written (one row per asset and day, finite positive prices
inside their high-low range, volume >= 0, no candle that has not closed yet), and a day is
committed only when every configured asset is there, unless ``prices.accept_gaps`` says otherwise:
a day left open is fetched again by the next run.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.clients.prices import CsvPriceSource, PriceSource, PriceSourceError
from tasks.core.errors import DataError
from tasks.core.storage import Lake

_PRICE_COLUMNS = ("open_usd", "high_usd", "low_usd", "close_usd")


def days_between(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def _retry_unless_answered(task, task_run, state) -> bool:
    """Prefect retries only surprises: the live clients already retried 429/5xx/timeouts, and a
    PriceSourceError (bad symbol, key, malformed file) will not heal by asking again."""
    try:
        state.result()
    except PriceSourceError:
        return False
    except Exception:  # anything else is worth another try
        return True
    return True


@task(name="fetch-prices", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_unless_answered,
      cache_policy=NO_CACHE)
def fetch_prices(source: PriceSource, assets: tuple[str, ...], start: date, end: date) -> pl.DataFrame:
    return pl.concat([source.fetch_daily(a, start, end) for a in assets], how="vertical")


def candle_rules(today: date) -> list[tuple[str, pl.Expr]]:
    """(rule, expression true on a row that breaks it), in the order they are reported."""
    finite_positive = pl.all_horizontal([pl.col(c).is_finite() & (pl.col(c) > 0) for c in _PRICE_COLUMNS])
    return [
        ("one row per asset and day", pl.struct("asset", "date").is_duplicated()),
        ("open, high, low and close are finite and > 0", ~finite_positive.fill_null(False)),
        ("low <= open, close <= high", ~((pl.col("low_usd") <= pl.min_horizontal("open_usd", "close_usd"))
                                         & (pl.max_horizontal("open_usd", "close_usd") <= pl.col("high_usd")))),
        ("volume >= 0 and finite", ~(pl.col("volume_base").is_finite() & (pl.col("volume_base") >= 0)).fill_null(False)),
        (f"the candle has closed (its UTC day is before today, {today})", pl.col("date") >= today),
    ]


def candle_origins(source: PriceSource, assets: tuple[str, ...]) -> dict[str, str]:
    """Where each asset's candles come from, as an error message should name it: the file, or the API."""
    if isinstance(source, CsvPriceSource):
        return {a: str(source.path(a)) for a in assets}
    return {a: f"{source.name} API" for a in assets}


def check_candles(candles: pl.DataFrame, today: date, origins: dict[str, str] | None = None) -> None:
    """Raise :class:`DataError` naming the file (or API), the first bad row and the rule it breaks."""
    for rule, broken in candle_rules(today):
        bad = candles.filter(broken)
        if bad.height:
            row = bad.row(0, named=True)
            values = ", ".join(f"{c} {row[c]}" for c in (*_PRICE_COLUMNS, "volume_base"))
            where = (origins or {}).get(row["asset"], row["source"])
            raise DataError(f"{where}: {row['asset']} {row['date']} breaks the rule '{rule}' ({values}; "
                            f"{bad.height} row(s) in all); no price day was written")


def write_price_days(candles: pl.DataFrame, lake: Lake, days: list[date], assets: tuple[str, ...],
                     source_name: str, overwrite: bool, *, today: date, accept_gaps: bool = False,
                     origins: dict[str, str] | None = None) -> list[dict]:
    """One partition per day, after every candle passed :func:`check_candles`. A day with no candle,
    or (unless ``accept_gaps``) without every asset, is left open and retried by the next run."""
    check_candles(candles, today, origins)
    reports = []
    by_day = candles.partition_by("date", as_dict=True)
    for day in days:
        if not overwrite and lake.is_complete("prices", day):
            reports.append({"day": day.isoformat(), "status": "skipped"})
            continue
        rows = by_day.get((day,), pl.DataFrame(schema=candles.schema))
        present = set(rows["asset"].to_list())
        gaps = [a for a in assets if a not in present]
        if rows.is_empty():
            reports.append({"day": day.isoformat(), "status": "missing", "gaps": gaps})
            continue
        if gaps and not accept_gaps:
            reports.append({"day": day.isoformat(), "status": "incomplete", "gaps": gaps})
            continue
        part = lake.open_partition("prices", day, overwrite)
        part.write(rows.sort("asset"), f"{source_name}__prices.parquet")
        part.commit({"rows": rows.height, "assets": sorted(present), "gaps": gaps, "source": source_name})
        reports.append({"day": day.isoformat(), "status": "done", "rows": rows.height, "gaps": gaps})
    return reports
