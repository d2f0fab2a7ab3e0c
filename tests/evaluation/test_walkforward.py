"""The walk-forward flow on the session's ingested lake: one parent MLflow run with a child run per fold, no
fold learning from the days it scores (dates, label thresholds), and a pooled verdict by the one rule."""

from datetime import date

import polars as pl
import pytest

from flows.build_dataset import build_dataset
from flows.walk_forward import walk_forward
from tasks.core.settings import load_settings
from tasks.core.storage import Workspace
from tasks.dataset.labels import label_thresholds
from tasks.evaluation.walkforward import BASELINES


@pytest.fixture
def built(lake_copy, data_dir):
    manifest = build_dataset()
    features = pl.read_parquet(data_dir / "datasets" / "direction" / manifest["fingerprint"] / "features.parquet")
    return manifest, features


def _runs(summary):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(load_settings().tracking_uri)
    parent = client.get_run(summary["run_id"])
    children = client.search_runs([summary["experiment_id"]], f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    return parent, sorted(children, key=lambda r: int(r.data.tags["fold"]))


def _check_folds(children, features, manifest, models):
    settings = load_settings()
    days = features["date"]
    for child in children:
        t = child.data.tags
        train = (date.fromisoformat(t["train_start"]), date.fromisoformat(t["train_end"]))
        val_start, val_end = date.fromisoformat(t["validation_start"]), date.fromisoformat(t["validation_end"])
        test_start = date.fromisoformat(t["test_start"])
        assert t["model_kind"] == "walk-forward-fold" and t["dataset_fingerprint"] == manifest["fingerprint"]
        # no fold's training (nor validation) days reach its test days, the embargo kept on both sides
        assert train[1] < val_start <= val_end < test_start
        assert (val_start - train[1]).days > manifest["embargo_days"] and (test_start - val_end).days > manifest["embargo_days"]
        # thresholds from the fold's own training days only
        train_returns = features.filter(days.is_between(*train))["next_day_return"].drop_nulls()
        neg, pos = label_thresholds(train_returns, settings.dataset.label_quantiles, None)
        assert float(child.data.params["threshold_negative_below"]) == pytest.approx(neg)
        assert float(child.data.params["threshold_positive_above"]) == pytest.approx(pos)
        for model in models:
            assert {f"{model}_test_macro_f1", f"{model}_validation_mcc"} <= set(child.data.metrics)
        assert child.data.metrics["rows_test"] > 0 and child.info.status == "FINISHED"


def test_walk_forward_baselines_only_then_with_lora(built, data_dir):
    manifest, features = built
    summary = walk_forward(step_days=5, validation_days=8, lora=False)
    parent, children = _runs(summary)
    assert summary["folds"] >= 2 and len(children) == summary["folds"] == len(summary["fold_runs"])
    assert parent.data.tags["model_kind"] == "walk-forward" and summary["verdict"].startswith("baselines only")
    assert {f"pooled_{b}_test_macro_f1" for b in BASELINES} <= set(parent.data.metrics)
    _check_folds(children, features, manifest, BASELINES)
    # every day from the first test day on is scored exactly once, by consecutive folds
    assert summary["first_test_day"] == manifest["splits"]["validation"][0]
    scored = sum(int(c.data.metrics["rows_test"]) for c in children)
    assert scored == summary["test_days"] == features.filter(
        (pl.col("date") >= date.fromisoformat(summary["first_test_day"])) & pl.col("next_day_return").is_not_null()).height

    # LoRA on two folds (tiny model, one epoch): its metrics per fold, the pooled verdict by the one rule
    ws = Workspace.from_settings(load_settings())
    first = date.fromisoformat(manifest["splits"]["validation"][0])
    summary = walk_forward(step_days=10, validation_days=8, first_test_day=first, epochs=1, lora=True)
    parent, children = _runs(summary)
    assert len(children) == 2 == summary["folds"]
    _check_folds(children, features, manifest, ("lora", *BASELINES))
    assert "pooled_lora_test_macro_f1" in parent.data.metrics and "pooled_lora_test_macro_f1" in summary
    verdict = parent.data.tags["verdict"]
    assert verdict == summary["verdict"] and verdict.startswith("LoRA ")
    assert any(w in verdict for w in ("beats", "does not beat", "no skill")) and "chosen on validation" in verdict
    arts = {a.path for a in _client_artifacts(parent.info.run_id)}
    assert {"walk_forward/folds.json", "plots"} <= arts
    assert ws.run_dir(parent.info.run_id).joinpath("plots", "walk_forward_test_macro_f1.png").read_bytes()[:4] == b"\x89PNG"


def _client_artifacts(run_id):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(load_settings().tracking_uri)
    return client.list_artifacts(run_id) + client.list_artifacts(run_id, "walk_forward")


def test_walk_forward_trains_the_encoder_kind_when_it_is_asked_for(built, data_dir):
    """model_kind = encoder (the flow parameter, `--model-kind` on the CLI): every fold trains and scores the MiniLM
    encoder (its head), not the causal model of the settings."""
    import json

    manifest, features = built
    first = date.fromisoformat(manifest["splits"]["validation"][0])
    summary = walk_forward(step_days=10, validation_days=8, first_test_day=first, epochs=1, lora=True, model_kind="encoder")
    parent, children = _runs(summary)
    assert len(children) == 2 == summary["folds"]
    _check_folds(children, features, manifest, ("lora", *BASELINES))
    assert parent.data.params["train.model_kind"] == "encoder" and parent.data.tags["verdict"].startswith("LoRA ")
    ws = Workspace.from_settings(load_settings())
    for child in children:
        trained = json.loads(ws.run_dir(child.info.run_id).joinpath("adapter", "chainsignal_train.json").read_text())
        assert trained["model_kind"] == "encoder" and trained["pooling"] == "mean"
