"""Walk-forward fanned out: folds submitted to 2 threads, or to a Dask cluster, give the same per-fold metrics
as one at a time, each fold its own child run of one parent. The lake holds prices only (the bundled real
candles, no chain, no posts), as the shared-history bench builds it."""

from datetime import date

import pytest

from flows.build_dataset import build_dataset
from flows.ingest_prices import ingest_prices
from flows.walk_forward import walk_forward
from tasks.core.errors import InputError
from tasks.core.settings import load_settings

START, END = date(2021, 1, 1), date(2021, 8, 31)
FOLD = dict(step_days=30, validation_days=20, first_test_day=date(2021, 4, 1), lora=False)


@pytest.fixture
def prices_only_dataset(data_dir):
    ingest_prices(START, END)
    return build_dataset(START, END)


def _fold_metrics(summary) -> dict[int, dict[str, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(load_settings().tracking_uri)
    children = client.search_runs([summary["experiment_id"]], f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert sorted(c.info.run_id for c in children) == sorted(summary["fold_runs"])
    assert all(c.info.status == "FINISHED" for c in children)
    return {int(c.data.tags["fold"]): c.data.metrics for c in children}


def test_folds_in_parallel_threads_and_on_dask_score_as_one_at_a_time(prices_only_dataset, monkeypatch):
    assert prices_only_dataset["chain_label"] == "no chain data" and prices_only_dataset["inputs"]["transactions"] == 0
    one = walk_forward(**FOLD, concurrency=1)
    two = walk_forward(**FOLD, concurrency=2)
    assert one["folds"] == two["folds"] == 5 and one["run_id"] != two["run_id"]
    sequential = _fold_metrics(one)
    assert sorted(sequential) == list(range(5))
    assert _fold_metrics(two) == sequential
    # the folds differ from one another: the comparison is not between constants
    assert len({round(m["logistic_test_macro_f1"], 6) for m in sequential.values()}) > 1
    assert {k: v for k, v in two.items() if k.startswith("pooled_")} == {k: v for k, v in one.items() if k.startswith("pooled_")}

    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        monkeypatch.setenv("CHAINSIGNAL_SERVICES__DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        on_dask = walk_forward(**FOLD)
    assert _fold_metrics(on_dask) == sequential

    with pytest.raises(InputError, match="concurrency must be at least 1"):
        walk_forward(**FOLD, concurrency=0)


def test_without_posts_there_is_no_sentiment_rule_and_the_majority_is_not_called_collapsed(prices_only_dataset):
    """A prices-only lake has no post to score: its 'sentiment rule' would be the majority class again, named as a
    collapsed baseline on every run. It is left out there, and kept where any day has posts."""
    import polars as pl

    from tasks.core.storage import Workspace
    from tasks.evaluation.baselines import split_baselines
    from tasks.evaluation.verdict import Comparison, decide

    settings = load_settings()
    version = Workspace.from_settings(settings).dataset_version(settings.dataset.name, prices_only_dataset["fingerprint"])
    features = pl.read_parquet(version.features_path)
    assert features["sentiment_mean"].is_null().all()
    preds, _, _ = split_baselines(features, version.manifest, "test", task="direction", seed=0, majority="NEUTRAL")
    assert set(preds) == {"majority", "persistence", "logistic"}
    one_day = features.with_columns(pl.when(pl.col("date") == pl.col("date").max()).then(0.5)
                                    .otherwise(None).alias("sentiment_mean"))
    preds, _, _ = split_baselines(one_day, version.manifest, "test", task="direction", seed=0, majority="NEUTRAL")
    assert "sentiment_rule" in preds

    shares = {"majority": {"NEUTRAL": 1.0}, "logistic": {"NEGATIVE": 0.3, "NEUTRAL": 0.4, "POSITIVE": 0.3}}
    v = decide("test", {b: Comparison(b, 0.4, 0.3, -0.05, 0.1) for b in shares}, "logistic",
               lora_share={"NEGATIVE": 0.3, "NEUTRAL": 0.4, "POSITIVE": 0.3}, true_share=shares["logistic"],
               mcc_interval=(0.02, 0.2), baseline_shares=shares, n=30)
    assert v.collapsed_baselines == () and "collapsed" not in v.text
