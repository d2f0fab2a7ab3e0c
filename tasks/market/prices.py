"""Daily price candles into the lake: one partition per UTC day holding every configured asset."""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.clients.prices import PriceSource, PriceSourceError
from tasks.core.storage import Lake


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


def write_price_days(candles: pl.DataFrame, lake: Lake, days: list[date], assets: tuple[str, ...],
                     source_name: str, overwrite: bool) -> list[dict]:
    """One partition per day. A day with no candle for any asset is left open (retried later)."""
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
        part = lake.open_partition("prices", day, overwrite)
        part.write(rows.sort("asset"), f"{source_name}__prices.parquet")
        part.commit({"rows": rows.height, "assets": sorted(present), "gaps": gaps, "source": source_name})
        reports.append({"day": day.isoformat(), "status": "done", "rows": rows.height, "gaps": gaps})
    return reports
