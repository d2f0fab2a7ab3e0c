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
