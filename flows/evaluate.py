"""evaluate: score a training run's adapter against honest baselines on the same splits.

Downloads the adapter from the run's MLflow artifacts (so what is evaluated is what was logged),
scores validation and test by label likelihood, compares with majority / persistence /
logistic-regression baselines, logs metrics, the comparison table, plots and a one-line verdict
to the run, and logs each baseline as its own run for the MLflow compare view. The report a person
reads (verdict, macro-F1, MCC, IC, log-loss and Brier skill, the backtest net of
``evaluation.cost_bp``, each with what it means) is the run's ``evaluation/report.md``, its
description in MLflow, and the flow run's ``evaluation-report`` artifact in Prefect.

Run locally:  chainsignal evaluate            (the latest LoRA run)
              chainsignal evaluate --run-id <id>
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import settings_for, workspace
from tasks.core.errors import NotFoundError
from tasks.core.logs import get_logger
from tasks.evaluation.evaluate import evaluate_adapter
from tasks.ops.orchestration import notify_failure
from tasks.ops.runs import publish_summary, started
from tasks.tracking.champion import CHAMPION, METRIC, candidate_scores, competes, promote_if_better, promotion_summary
from tasks.tracking.links import compare_url, run_url
from tasks.tracking.params import logged_cutoff_len, logged_seed
from tasks.tracking.tracker import MlflowTracker, run_base_model


@flow(name="evaluate", log_prints=True, on_failure=[notify_failure])
def evaluate(run_id: str | None = None) -> dict:
    t0 = started()
    log = get_logger()
    settings = settings_for()
    ws = workspace(settings)
    tracker = MlflowTracker.from_settings(settings, ws.mlflow_artifacts_dir())
    run = tracker.client.get_run(run_id) if run_id else tracker.latest_run()
    if run is None:
        raise NotFoundError("no LoRA run to evaluate in this MLflow experiment: run `chainsignal train` first")
    run_id = run.info.run_id
    tags = run.data.tags
    ds_dir = ws.dataset_dir(tags["task"], tags["dataset_fingerprint"])
    run_eval = task(evaluate_adapter, name="evaluate-adapter", cache_policy=NO_CACHE)

    def evaluate_on_this_version(trained, adapter, work) -> dict:  # any run's adapter, on THIS dataset version
        base, model_type = run_base_model(tracker, trained, work, ws.model_hash_cache())
        return run_eval(adapter, base, ds_dir, cutoff_len=logged_cutoff_len(trained), seed=logged_seed(run),
                        plots_dir=work / "plots", model_type=model_type, cost_bp=settings.evaluation.cost_bp)

    work = ws.reset_dir(ws.run_dir(run_id) / "eval")
    report = evaluate_on_this_version(run, tracker.download(run_id, "adapter", work), work)
    for warning in report["warnings"]:
        log.warning(warning)
    with tracker.run(run_id=run_id):
        # the run's own numbers only; each baseline's are in its own run, side by side in the compare view
        tracker.log_metrics({k: v for k, v in report["metrics"].items() if not k.startswith(("baseline_", "ensemble_"))})
        tracker.log_table(report["table"], "evaluation/comparison.json")
        tracker.log_table(report["report"], "evaluation/per_class_report.json")
        tracker.log_dict(report["predictions"], "evaluation/predictions.json")
        tracker.log_artifact(report["markdown_path"], "evaluation")
        for plot in report["plots"]:
            tracker.log_artifact(plot, "plots")
        tracker.set_tags({"verdict": report["verdict"], "best_baseline": report["best_baseline"],
                          "collapse_warning": "; ".join(report["warnings"]) or "none"})
        # MLflow renders the description on the run's page (a tag: at most 8,000 characters)
        tracker.set_description(report["markdown"] if len(report["markdown"]) < 8000 else report["verdict"])
    promotion = None
    if competes(tags):

        def rescore_champion(mv) -> float:  # the champion, re-scored on THIS dataset version's validation split
            champ = tracker.client.get_run(mv.run_id)
            cdir = ws.reset_dir(ws.run_dir(run_id) / "champion")
            return evaluate_on_this_version(champ, tracker.download_alias(CHAMPION, cdir / "adapter"), cdir)["metrics"][METRIC]

        promotion = promote_if_better(tracker, tags["registered_version"], candidate_scores(report), rescore_champion)
        log.info("champion alias: %s", promotion["reason"])
    baseline_runs = tracker.log_baselines(report["baselines"], task=tags["task"], fingerprint=tags["dataset_fingerprint"],
                                          seed=logged_seed(run), compared_with=run_id)
    ui = settings.mlflow_ui_url
    summary = {"flow": "evaluate", "run_id": run_id, "verdict": report["verdict"], "task": tags["task"],
               **{k: round(v, 4) for k, v in report["metrics"].items() if k.startswith(("test_", "validation_"))},
               **promotion_summary(promotion), "mlflow_run": run_url(ui, tracker.experiment_id, run_id),
               "compare": compare_url(ui, tracker.experiment_id, [run_id, *baseline_runs.values()]),
               "experiment_id": tracker.experiment_id, "compared_runs": [run_id, *baseline_runs.values()],
               "seconds": round(started() - t0, 2)}
    publish_summary(summary, "evaluate summary")
    create_markdown_artifact(report["markdown"], key="evaluation-report", description="evaluation report")
    return summary
