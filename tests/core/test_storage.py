import json
from datetime import UTC, date, datetime
from decimal import Decimal

import polars as pl
import pytest

from tasks.core.errors import NotFoundError
from tasks.core.manifests import DatasetManifest
from tasks.core.schemas import PRICES, TRANSACTIONS, SchemaError
from tasks.core.storage import Lake, Workspace, block_chunk_name, write_json

DAY = date(2021, 1, 5)


def prices(n: int = 2) -> pl.DataFrame:
    return pl.DataFrame({
        "date": [DAY] * n, "asset": ["ETH", "BTC"][:n], "open_usd": [1.0] * n, "high_usd": [2.0] * n,
        "low_usd": [0.5] * n, "close_usd": [1.5] * n, "volume_base": [10.0] * n, "source": ["t"] * n,
    }, schema=PRICES)


def test_chunk_names_sort_by_block():
    names = [block_chunk_name("ethereum", "transactions", a, b) for a, b in [(999, 1000), (10, 20), (1000, 1999)]]
    assert sorted(names) == [names[1], names[0], names[2]]
    assert names[1] == "ethereum__transactions__0000000010_0000000020.parquet"


def test_partition_is_complete_only_after_commit(tmp_path):
    lake = Lake(tmp_path)
    part = lake.open_partition("prices", DAY)
    part.write(prices(), "file__prices.parquet")
    assert not lake.is_complete("prices", DAY)
    assert lake.scan("prices").collect().height == 0  # incomplete days are invisible
    part.commit({"rows": 2})
    assert lake.is_complete("prices", DAY)
    assert lake.scan("prices").collect().height == 2
    assert lake.completed_days("prices") == [DAY]
    assert not list(part.dir.glob(".*tmp*"))  # no temporary files left behind


def test_a_lake_under_a_relative_path_finds_its_committed_days(tmp_path, monkeypatch):
    """The default data_dir is the relative "var" (the demo's): its committed days must read back."""
    monkeypatch.chdir(tmp_path)
    lake = Lake("var/lake")
    part = lake.open_partition("prices", DAY)
    part.write(prices(), "file__prices.parquet")
    part.commit({"rows": 2})
    assert lake.completed_days("prices") == [DAY] and lake.scan("prices").collect().height == 2


def test_schema_drift_fails_loudly(tmp_path):
    part = Lake(tmp_path).open_partition("prices", DAY)
    with pytest.raises(SchemaError, match="missing columns"):
        part.write(prices().drop("volume_base"), "x.parquet")
    with pytest.raises(SchemaError, match="wrong dtypes"):
        part.write(prices().with_columns(pl.col("close_usd").cast(pl.Float32)), "x.parquet")
    assert not part.has("x.parquet")


def test_overwrite_swaps_the_whole_partition(tmp_path):
    lake = Lake(tmp_path)
    first = lake.open_partition("prices", DAY)
    first.write(prices(2), "old__prices.parquet")
    first.commit({"rows": 2})
    staged = lake.open_partition("prices", DAY, overwrite=True)
    staged.write(prices(1), "new__prices.parquet")
    assert lake.scan("prices").collect().height == 2  # readers still see the old day
    staged.commit({"rows": 1})
    files = sorted(p.name for p in lake.partition_dir("prices", DAY).iterdir())
    assert files == ["_manifest.json", "new__prices.parquet"]
    assert lake.scan("prices").collect().height == 1
    assert not any((tmp_path / "prices" / ".trash").glob("*"))


def test_wei_values_above_2_64_round_trip(tmp_path):
    big = Decimal(2**70 + 12345)
    row = {
        "block_number": 1, "block_timestamp": datetime(2021, 1, 5, tzinfo=UTC), "transaction_index": 0,
        "transaction_hash": "0xab", "nonce": 0, "from_address": "0x1", "to_address": None, "value_wei": big,
        "value_eth": float(big) / 1e18, "gas_limit": 21000, "gas_price_wei": 1, "max_fee_per_gas_wei": None,
        "max_priority_fee_per_gas_wei": None, "transaction_type": 0, "input_selector": None, "input_bytes": 0,
        "chain_id": 1,
    }
    lake = Lake(tmp_path)
    part = lake.open_partition("transactions", DAY)
    part.write(pl.DataFrame([row], schema=TRANSACTIONS), "t.parquet")
    part.commit({})
    assert lake.scan("transactions").collect()["value_wei"][0] == big


def test_dataset_version_reads_its_manifest_typed_and_the_json_keeps_its_shape(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(NotFoundError, match="build-dataset"):
        ws.dataset_version("direction")
    manifest = DatasetManifest(
        fingerprint="0123456789abcdef", task="direction", target_asset="ETH", start=date(2021, 1, 1), end=date(2021, 3, 1),
        splits={"train": (date(2021, 1, 1), date(2021, 2, 1)), "test": (date(2021, 2, 10), date(2021, 2, 28))},
        thresholds={"negative_below": -0.01, "positive_above": 0.02}, rows={"train": 30, "predict": 1},
        numeric_features=["eth_ret_1d"], settings={"seed": 7},
    )
    versions = ws.datasets("direction")
    version = versions.version(manifest.fingerprint)
    write_json(version.manifest_path, manifest.to_dict())
    versions.mark_latest(manifest.fingerprint)

    latest = ws.dataset_version("direction")
    assert latest == version and latest.fingerprint == manifest.fingerprint and latest.exists()
    assert latest.manifest == manifest
    assert latest.read_records("predict") == []  # an empty split writes no file
    on_disk = json.loads(version.manifest_path.read_text())
    assert on_disk["start"] == "2021-01-01" and on_disk["splits"]["train"] == ["2021-01-01", "2021-02-01"]
    assert list(manifest.to_dict()) == ["fingerprint", "task", "kind", "target_asset", "start", "end", "splits",
                                        "embargo_days", "thresholds", "rows", "label_counts", "inputs", "chain_label",
                                        "numeric_features", "settings", "path"]  # the order build-dataset returns


def test_an_older_manifest_still_loads():
    old = DatasetManifest.from_dict({"fingerprint": "f", "task": "direction", "rows": {"train": 8}, "retired_key": 1})
    assert old.kind == "class" and old.rows == {"train": 8} and old.start is None
