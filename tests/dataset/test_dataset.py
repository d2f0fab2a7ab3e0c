from datetime import date, timedelta

import polars as pl
import pytest

from flows.build_dataset import build_dataset
from flows.daily_ingest import daily_ingest
from tasks.core.storage import Lake, Workspace, read_json
from tasks.dataset.frames import LOCAL_DEV_CHAIN_ID
from tasks.dataset.labels import label_from_return
from tasks.dataset.records import fingerprint
from tasks.dataset.split import plan_splits
from tests.conftest import CHAIN_END, CHAIN_START

DAYS = [date(2021, 1, 1) + timedelta(days=i) for i in range(60)]


def test_splits_are_disjoint_ordered_and_embargoed():
    plan = plan_splits(DAYS, 0.15, 0.15, embargo_days=2)
    assert plan.train[1] < plan.validation[0] < plan.validation[1] < plan.test[0]
    assert (plan.validation[0] - plan.train[1]).days == 3  # two embargo days in between
    assert (plan.test[0] - plan.validation[1]).days == 3
    assert plan.test[1] == DAYS[-1] and plan.train[0] == DAYS[0]


def test_too_few_days_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        plan_splits(DAYS[:5], 0.15, 0.15, embargo_days=1)


def test_splits_by_dates_start_where_told_and_keep_the_embargo():
    """dataset.validation_start / test_start (the issue's 'train to 2022, validation 2023, test 2024'): validation
    starts on its day, test on its day, the embargo days come off the end of train and of validation."""
    plan = plan_splits(DAYS, 0.15, 0.15, embargo_days=2, starts=(date(2021, 2, 1), date(2021, 2, 20)))
    assert plan.validation[0] == date(2021, 2, 1) and plan.test == (date(2021, 2, 20), DAYS[-1])
    assert plan.train == (DAYS[0], date(2021, 1, 29)) and plan.validation[1] == date(2021, 2, 17)
    with pytest.raises(ValueError, match="each split needs days"):
        plan_splits(DAYS, 0.15, 0.15, embargo_days=1, starts=(date(2021, 2, 1), date(2022, 1, 1)))


def test_dead_band_labels():
    out = pl.select(label_from_return(pl.lit(pl.Series([-0.05, 0.0, 0.05, None])), -0.01, 0.01).alias("l"))
    assert out["l"].to_list() == ["NEGATIVE", "NEUTRAL", "POSITIVE", None]


def test_the_demo_node_runs_on_the_chain_id_records_call_synthetic():
    from tasks.chain.localnode import CHAIN_ID

    assert CHAIN_ID == LOCAL_DEV_CHAIN_ID


def test_fingerprint_changes_with_records_or_settings():
    recs = [{"date": "2021-01-01", "output": "POSITIVE"}]
    assert fingerprint(recs, "a") == fingerprint(list(recs), "a")
    assert fingerprint(recs, "a") != fingerprint(recs, "b")
    assert fingerprint(recs, "a") != fingerprint([{**recs[0], "output": "NEUTRAL"}], "a")


@pytest.fixture
def ingested(seeded_node, data_dir):
    node, _ = seeded_node
    summary = daily_ingest(CHAIN_START, CHAIN_END, rpc_url=node.url)
    return summary


def test_build_dataset_is_point_in_time_and_versioned(ingested, data_dir):
    manifest = build_dataset()
    out = data_dir / "datasets" / "direction" / manifest["fingerprint"]
    frame = pl.read_parquet(out / "features.parquet")
    train = read_json(out / "train.json")
    assert len(train) == manifest["rows"]["train"] and {"instruction", "input", "output"} <= set(train[0])
    assert manifest["chain_label"] == "synthetic local chain" and "synthetic local chain" in train[0]["input"]
    assert manifest["rows"]["predict"] == 1 and frame.filter(pl.col("split") == "predict")["label"].to_list() == [None]
    counts = manifest["label_counts"]["train"]
    assert max(counts.values()) - min(counts.values()) <= 2  # train-quantile thresholds balance the classes
    import datasets

    dd = datasets.load_from_disk(str(out / "hf"))
    assert set(dd) == {"train", "validation", "test", "predict"}
    version = Workspace(data_dir).dataset_version("direction")  # LATEST
    assert version.fingerprint == manifest["fingerprint"] and version.manifest.rows == manifest["rows"]
    assert version.manifest.to_dict()["splits"] == manifest["splits"]
    # Same lake, same settings: same version.
    assert build_dataset()["fingerprint"] == manifest["fingerprint"]

    # Point in time: alter everything after day t and day t's features must not move.
    t = date(2021, 2, 10)
    lake = Lake(data_dir / "lake")
    for day in lake.completed_days("prices"):
        if day > t:
            path = lake.partition_dir("prices", day) / "file__prices.parquet"
            pl.read_parquet(path).with_columns(pl.col("close_usd") * 3).write_parquet(path)
    for day in lake.completed_days("sentiment"):
        if day > t:
            for path in lake.partition_dir("sentiment", day).glob("*.parquet"):
                pl.read_parquet(path).with_columns(pl.col("compound") * -1).write_parquet(path)
    changed = pl.read_parquet(data_dir / "datasets" / "direction" / build_dataset()["fingerprint"] / "features.parquet")
    cols = [c for c in frame.columns if c not in ("next_day_return", "label", "split", "today_label")]
    before = frame.filter(pl.col("date") <= t).select(cols)
    after = changed.filter(pl.col("date") <= t).select(cols)
    from polars.testing import assert_frame_equal

    # Exact up to float summation order (group means are computed in parallel).
    assert_frame_equal(before, after, check_exact=False, rel_tol=1e-12, abs_tol=1e-12)
    # ...while the label of day t (tomorrow's move) does change: it is not a feature.
    row = lambda f: f.filter(pl.col("date") == t)["next_day_return"].item()  # noqa: E731
    assert row(changed) != pytest.approx(row(frame))
