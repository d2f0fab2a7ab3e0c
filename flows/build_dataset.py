"""build-dataset: lake -> daily features -> labelled Alpaca records + a versioned DatasetDict.

Writes ``<data_dir>/datasets/<task>/<fingerprint>/`` (train/validation/test/predict JSON,
features.parquet, hf/ DatasetDict, manifest.json) and points ``LATEST`` at it.

Run locally:  chainsignal build-dataset
"""

from __future__ import annotations

from datetime import date

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import settings_for, workspace
from tasks.dataset.build import build_dataset_version
from tasks.ops.orchestration import notify_failure
from tasks.ops.runs import publish_summary, started


@flow(name="build-dataset", on_failure=[notify_failure])  # no log_prints: datasets' hashing prints bytecode through it
def build_dataset(start: date | None = None, end: date | None = None, target_asset: str | None = None,
                  task_name: str | None = None) -> dict:
    t0 = started()
    settings = settings_for(dataset={"start_date": start, "end_date": end, "target_asset": target_asset,
                                     "name": task_name})
    ws = workspace(settings)
    ds = settings.dataset
    build = task(build_dataset_version, name="build-dataset-version", cache_policy=NO_CACHE)
    manifest = build(
        ws.lake, ws.datasets(ds.name),
        dataset_settings=ds, assets=list(settings.prices.assets),
        settings_hash=settings.hash("dataset", "prices", "sentiment"), settings_public=settings.public_dict(),
        sentiment_settings=settings.sentiment,
    )
    summary = {"flow": "build-dataset", "fingerprint": manifest.fingerprint, "path": manifest.path,
               "task": manifest.task, **{f"rows_{k}": v for k, v in manifest.rows.items()},
               "negative_below": round(manifest.thresholds["negative_below"], 5),
               "positive_above": round(manifest.thresholds["positive_above"], 5),
               "chain": manifest.chain_label, "seconds": round(started() - t0, 2)}
    publish_summary(summary, "build-dataset summary")
    return manifest.to_dict()  # the manifest as JSON: what the CLI prints and the daily flow reads
