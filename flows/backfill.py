"""backfill: a UTC date range of history - prices and tweets for the range, then the chain fanned
out per day on Dask (prefect-dask's DaskTaskRunner: a LocalCluster by default, the scheduler in
``services.dask_scheduler_address`` for a real cluster), the provider's rate limit shared.

Run locally:  chainsignal backfill --start 2021-01-01 --end 2021-01-31
Deployed:     prefect deployment run backfill/backfill -p start=2021-01-01 -p end=2021-01-31
"""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.ingest_prices import ingest_prices
from flows.scrape_tweets import scrape_tweets
from tasks.core.settings import load_settings
from tasks.ops.backfill import backfill_chain_day, dask_task_runner
from tasks.ops.orchestration import notify_failure
from tasks.ops.runs import publish_summary, resolve_days, started, summarize


@flow(name="backfill", log_prints=True, on_failure=[notify_failure],
      task_runner=dask_task_runner(load_settings().services))
def backfill(start: date, end: date, overwrite: bool = False, rpc_url: str | None = None) -> dict:
    t0 = started()
    days = resolve_days(start, end)
    prices = ingest_prices(days[0], days[-1], overwrite)
    tweets = scrape_tweets(days[0], days[-1], overwrite)
    futures = [backfill_chain_day.submit(day, rpc_url, overwrite) for day in days]
    reports = [f.result() for f in futures]
    summary = summarize("backfill", reports, t0, prices_done=prices.get("partitions_done", 0),
                        tweets_done=tweets.get("partitions_done", 0))
    publish_summary(summary, "backfill summary", reports)
    return summary
