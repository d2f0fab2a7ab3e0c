"""walk-forward: the evaluation to quote. Over a built dataset version's days, retrain every ``step_days`` on
an expanding window and score the next ``step_days`` (as qlib's rolling tasks), then judge LoRA by the one
verdict rule on every fold's test days pooled.

Each fold relabels its days with thresholds from its own training days, fits the baselines (majority,
persistence, logistic regression) and, unless ``lora=False``, trains and scores a causal LoRA adapter.
MLflow: one parent run (tag model_kind=walk-forward) holding the per-fold table, the plot of test
macro-F1 per fold, the pooled metrics and the verdict; each fold is a nested child run
(model_kind=walk-forward-fold) with its dates, thresholds and every model's metrics.

Fan-out: folds are independent, so each is one ``walk-forward-fold`` task submitted to a Prefect task runner:
``concurrency`` threads of this process (1, the default, runs them one after the other), or the Dask cluster at
``services.dask_scheduler_address`` when one is set (the backfill's cluster; workers with GPUs train there).
A fold task resolves its settings, dataset version and MLflow client where it runs and logs only to its own
child run by id, so folds never share an active MLflow run.

Run locally:  chainsignal walk-forward --step-days 10 --epochs 1
              chainsignal walk-forward --no-lora            (baselines only: seconds)
History:      bench/walk_forward_shared.py (the shared 2018-2024 prices; bench/results/walk_forward_shared.md)
"""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import settings_for, workspace
from tasks.core.errors import InputError
from tasks.dataset.prompter import Prompter
from tasks.evaluation.foldmodel import fold_lora
from tasks.evaluation.folds import Fold, walk_forward_folds
from tasks.evaluation.walkforward import (
    FoldResult,
    fold_baselines,
    fold_frame,
    fold_records,
    new_fold_result,
    plot_fold_f1,
    pooled_metrics,
    pooled_verdict,
)
from tasks.ops.backfill import dask_task_runner
from tasks.ops.orchestration import notify_failure
from tasks.ops.runs import publish_summary, started
from tasks.tracking.links import run_url
from tasks.tracking.tracker import MlflowTracker, git_commit

PARENT_RUN_TAG = "mlflow.parentRunId"  # what MLflow's nested runs set: the UI shows the fold under its parent


def _run_fold(fold, features, settings, manifest, ws, tracker, parent_id: str, lora: bool) -> tuple[FoldResult, str]:
    """One fold in its own child run: relabel, baselines, LoRA; returns its result and the child run's id."""
    tags = {PARENT_RUN_TAG: parent_id, "model_kind": "walk-forward-fold", "fold": str(fold.index),
            "dataset_fingerprint": manifest.fingerprint, **{k: str(v) for k, v in fold.as_dict().items() if k != "fold"}}
    child = tracker.client.create_run(tracker.experiment_id, run_name=f"fold-{fold.index:02d}-{fold.test[0]}", tags=tags).info.run_id
    try:
        result = _fold_work(fold, features, settings, manifest, ws, tracker, child, lora)
    except BaseException:
        tracker.client.set_terminated(child, "FAILED")  # a failed fold shows failed, not running forever
        raise
    tracker.client.set_terminated(child)
    return result, child


def _fold_work(fold, features, settings, manifest, ws, tracker, child: str, lora: bool) -> FoldResult:
    frame, thresholds = fold_frame(features, fold, settings.dataset)
    result = new_fold_result(frame, fold, thresholds)
    result.preds.update(fold_baselines(frame, manifest.numeric_features, settings.dataset.seed))
    for k, v in thresholds.items():
        tracker.client.log_param(child, f"threshold_{k}", v)
    if lora:
        prompter = Prompter.load()
        records = fold_records(frame, prompter, list(settings.prices.assets), manifest.chain_label)
        train = task(fold_lora, name=f"train-fold-{fold.index}", cache_policy=NO_CACHE)
        preds, trained = train(settings.train, records, prompter, ws.model_dir, ws.run_dir(child) / "adapter",
                               lambda m, step: tracker.log_metrics(m, step, run_id=child))
        result.preds["lora"] = preds
        tracker.log_metrics({"train_seconds": trained.seconds, "train_loss_last": trained.train_loss_last}, run_id=child)
    tracker.log_metrics({**result.metrics(), **{f"rows_{k}": v for k, v in result.rows.items()}}, run_id=child)
    return result


@task(name="walk-forward-fold", cache_policy=NO_CACHE)
def walk_forward_fold(fold: Fold, dataset: str, parent_id: str, lora: bool, train: dict[str, Any]) -> tuple[FoldResult, str]:
    """One fold where the task runner runs it (a thread here or a Dask worker): settings, the dataset version and
    the tracker are resolved there from the flow's train overrides, so only plain values cross; it logs to its own
    child run by id."""
    settings = settings_for(train=train)
    ws = workspace(settings)
    version = ws.dataset_version(settings.dataset.name, dataset)
    tracker = MlflowTracker.from_settings(settings, ws.mlflow_artifacts_dir())
    features = pl.read_parquet(version.features_path)
    return _run_fold(fold, features, settings, version.manifest, ws, tracker, parent_id, lora)


def fold_task_runner(concurrency: int, services) -> Any:
    """Where folds run: the Dask cluster at ``services.dask_scheduler_address`` when one is set, else
    ``concurrency`` threads of this process."""
    if concurrency < 1:
        raise InputError(f"walk-forward concurrency must be at least 1, got {concurrency}")
    if services.dask_scheduler_address:
        return dask_task_runner(services)
    return ThreadPoolTaskRunner(max_workers=concurrency)


@flow(name="walk-forward", log_prints=True, on_failure=[notify_failure])
def walk_forward(dataset: str | None = None, step_days: int = 10, validation_days: int = 10,
                 first_test_day: date | None = None, epochs: float | None = None, lora: bool = True,
                 model_kind: str | None = None, encoder_lora_layers: int | None = None, precision: str | None = None,
                 concurrency: int = 1) -> dict[str, Any]:
    t0 = started()
    train = dict(epochs=epochs, model_kind=model_kind, encoder_lora_layers=encoder_lora_layers, precision=precision)
    settings = settings_for(train=train)  # each fold resolves the same overrides where it runs
    ws = workspace(settings)
    version = ws.dataset_version(settings.dataset.name, dataset)
    manifest = version.manifest
    if manifest.task != "direction":
        raise InputError(f"walk-forward evaluates the direction task; dataset {manifest.fingerprint} is {manifest.task!r}")
    runner = fold_task_runner(concurrency, settings.services)
    features = pl.read_parquet(version.features_path)
    days = features.filter(pl.col("next_day_return").is_not_null())["date"].to_list()
    first = first_test_day or manifest.splits["validation"][0]
    folds = walk_forward_folds(days, first_test_day=first, step_days=step_days, validation_days=validation_days,
                               embargo_days=manifest.embargo_days)
    if not folds:
        raise InputError(f"no fold fits: too few labelled days before {first} for {validation_days} validation days "
                         "and 30 training days; pass an earlier --first-test-day or build a longer dataset")
    where = settings.services.dask_scheduler_address
    print(f"walk-forward: {len(folds)} folds of {step_days} test days from {folds[0].test[0]} to {folds[-1].test[1]}, "
          + (f"on the Dask cluster at {where}" if where else f"{concurrency} at a time"))
    tracker = MlflowTracker.from_settings(settings, ws.mlflow_artifacts_dir())
    tags = {"model_kind": "walk-forward", "task": manifest.task, "dataset_fingerprint": manifest.fingerprint,
            "git_commit": git_commit(), "lora": str(lora).lower()}
    with tracker.run(run_name=f"walk-forward-{manifest.fingerprint}-{step_days}d", tags=tags) as parent_id:
        tracker.log_params({"step_days": step_days, "validation_days": validation_days, "first_test_day": first,
                            "embargo_days": manifest.embargo_days, "folds": len(folds), "window": "expanding",
                            "concurrency": concurrency, **settings.flat_params()})
        with runner:  # every fold submitted at once; results read back in fold order
            futures = [runner.submit(walk_forward_fold, {"fold": f, "dataset": manifest.fingerprint, "parent_id": parent_id,
                                                         "lora": lora, "train": train})
                       for f in folds]
            runs = [fut.result() for fut in futures]
        results = [r for r, _ in runs]
        metrics = pooled_metrics(results)
        tracker.log_metrics(metrics)
        tracker.log_table([r.row() for r in results], "walk_forward/folds.json")
        tracker.log_artifact(plot_fold_f1(results, ws.run_dir(parent_id) / "plots" / "walk_forward_test_macro_f1.png"), "plots")
        verdict = pooled_verdict(results, settings.dataset.seed).text if lora else "baselines only (lora=False): no LoRA verdict"
        tracker.set_tags({"verdict": verdict})
        tracker.set_description(verdict)
    summary = {"flow": "walk-forward", "run_id": parent_id, "dataset": manifest.fingerprint, "folds": len(folds),
               "first_test_day": folds[0].test[0].isoformat(), "last_test_day": folds[-1].test[1].isoformat(),
               "test_days": sum(r.rows["test"] for r in results), "verdict": verdict,
               **{k: round(v, 4) for k, v in metrics.items() if "_test_" in k and k.endswith(("macro_f1", "mcc"))},
               "fold_runs": [c for _, c in runs], "experiment_id": tracker.experiment_id,
               "mlflow_run": run_url(settings.mlflow_ui_url, tracker.experiment_id, parent_id),
               "seconds": round(started() - t0, 2)}
    publish_summary(summary, "walk-forward summary")
    return summary
