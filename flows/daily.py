"""daily: the scheduled parent flow - daily-ingest, then build-dataset, then predict.

Deployed as ``daily/daily`` on a cron (see deployments/prefect.yaml); defaults to yesterday (UTC).
Stale data (the dataset's newest day is older than the day just ingested) emits a
``chainsignal.data.stale`` event; predict without a champion skips without failing the chain.

Run locally:  chainsignal daily --start 2021-01-01
"""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.build_dataset import build_dataset
from flows.daily_ingest import daily_ingest
from flows.predict import predict
from tasks.core.manifests import DatasetManifest
from tasks.ops.orchestration import emit, notify_failure
from tasks.ops.runs import publish_summary, resolve_days, started


@flow(name="daily", log_prints=True, on_failure=[notify_failure])
def daily(start: date | None = None, end: date | None = None, overwrite: bool = False, rpc_url: str | None = None) -> dict:
    t0 = started()
    days = resolve_days(start, end)
    ingest = daily_ingest(days[0], days[-1], overwrite, rpc_url)
    manifest = DatasetManifest.from_dict(build_dataset())
    stale = manifest.end < days[-1]
    if stale:
        emit("data.stale", "dataset.direction", newest_day=manifest.end.isoformat(), expected=days[-1].isoformat())
    signal = predict(dataset=manifest.fingerprint)
    summary = {"flow": "daily", "start": days[0].isoformat(), "end": days[-1].isoformat(),
               "dataset": manifest.fingerprint, "newest_day": manifest.end.isoformat(), "stale": stale,
               "signal": signal.get("signal", signal.get("status")), "seconds": round(started() - t0, 2)}
    publish_summary(summary, "daily summary")
    return {"ingest": ingest, "predict": signal, **summary}
