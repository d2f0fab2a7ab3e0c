"""predict: the champion adapter (MLflow alias ``champion``) scores the newest day of the latest
dataset and writes the next day's signal to ``lake/signals`` and to a Prefect artifact, with the
track record of past signals against what happened. Without a champion it says so and skips.

Run locally:  chainsignal predict
Deployed:     prefect deployment run predict/predict   (and as the last step of daily/daily)
"""

from __future__ import annotations

import polars as pl
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import settings_for, workspace
from tasks.core.logs import get_logger
from tasks.evaluation.predict import score_newest_day, signal_frame, track_record
from tasks.ops.orchestration import emit, notify_failure
from tasks.ops.runs import publish_summary, started
from tasks.tracking.champion import CHAMPION
from tasks.tracking.params import logged_cutoff_len
from tasks.tracking.tracker import MlflowTracker, run_base_model


@flow(name="predict", log_prints=True, on_failure=[notify_failure])
def predict(dataset: str | None = None) -> dict:
    t0 = started()
    log = get_logger()
    settings = settings_for()
    ws = workspace(settings)
    name = settings.tracking.registered_model
    tracker = MlflowTracker.from_settings(settings, ws.mlflow_artifacts_dir())
    champion = tracker.champion()
    if champion is None:
        log.warning("predict: no '%s' alias on model %s yet: nothing to predict with, skipping", CHAMPION, name)
        emit("predict.skipped", f"model.{name}", reason="no champion")
        summary = {"flow": "predict", "status": "skipped", "reason": f"no champion version of {name}"}
        publish_summary(summary, "predict summary")
        return summary
    run = tracker.client.get_run(champion.run_id)
    ds_version = ws.dataset_version(settings.dataset.name, dataset)
    manifest = ds_version.manifest
    work = ws.reset_dir(ws.run_dir(champion.run_id) / "predict")
    adapter = tracker.download(champion.run_id, "adapter", work)
    base, model_type = run_base_model(tracker, run, work, ws.model_hash_cache())
    scored = task(score_newest_day, name="score-newest-day", cache_policy=NO_CACHE)(
        adapter, base, ds_version.dir, logged_cutoff_len(run), model_type=model_type)
    signal = signal_frame(scored, target_asset=manifest.target_asset, model_name=name, model_version=champion.version,
                          run_id=champion.run_id, dataset_fingerprint=manifest.fingerprint)
    day = signal["date"][0]
    part = ws.lake.open_partition("signals", day, overwrite=ws.lake.is_complete("signals", day))
    part.write(signal, f"{name}__signals.parquet")
    part.commit({"rows": 1, "model_version": str(champion.version), "dataset": manifest.fingerprint})
    record = track_record(ws.lake.scan("signals"), pl.scan_parquet(ds_version.features_path))
    resolved = record.filter(pl.col("hit").is_not_null())
    summary = {
        "flow": "predict", "status": "done", "date": day.isoformat(), "target_date": signal["target_date"][0].isoformat(),
        "signal": scored["label"], **{f"p_{k.lower()}": round(v, 4) for k, v in scored["probs"].items()},
        "model_version": str(champion.version), "dataset": manifest.fingerprint,
        "signals_resolved": resolved.height,
        "rolling_accuracy": round(float(resolved["rolling_accuracy"][-1]), 4) if resolved.height else None,
        "seconds": round(started() - t0, 2),
    }
    publish_summary(summary, "predict summary",
                    [{"day": r["date"].isoformat(), "status": "done", "signal": r["label"], "realized": r["realized"]}
                     for r in record.tail(10).iter_rows(named=True)])
    return summary
