"""daily: the scheduled parent flow - daily-ingest, then build-dataset (then predict, once it exists).

Deployed as ``daily/daily`` on a cron (see deployments/prefect.yaml); defaults to yesterday (UTC).

Run locally:  chainsignal daily --start 2021-01-01
"""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.build_dataset import build_dataset
from flows.daily_ingest import daily_ingest
from tasks.runs import publish_summary, resolve_days, started


@flow(name="daily", log_prints=True)
def daily(start: date | None = None, end: date | None = None, overwrite: bool = False, rpc_url: str | None = None) -> dict:
    t0 = started()
    days = resolve_days(start, end)
    ingest = daily_ingest(days[0], days[-1], overwrite, rpc_url)
    manifest = build_dataset()
    summary = {"flow": "daily", "start": days[0].isoformat(), "end": days[-1].isoformat(),
               "dataset": manifest["fingerprint"], "rows_predict": manifest["rows"]["predict"],
               "seconds": round(started() - t0, 2)}
    publish_summary(summary, "daily summary")
    return {"ingest": ingest, "dataset": manifest["fingerprint"], **summary}
