"""The lake and MLflow artifacts on an S3-compatible store: a real moto server on 127.0.0.1.

moto runs in server mode in this process (its own thread, a free port); s3fs, polars and MLflow
talk to it over HTTP exactly as they would to MinIO or AWS. Each test gets its own bucket.
"""

from __future__ import annotations

import json
import socket
import urllib.request
import uuid
from datetime import date

import polars as pl
import pytest
import s3fs

from flows.common import workspace
from tasks.core.errors import StorageError
from tasks.core.schemas import PRICES
from tasks.core.settings import SettingsError, load_settings
from tasks.core.storage import Lake, s3_options

moto_server = pytest.importorskip("moto.server")

DAY = date(2021, 1, 5)


@pytest.fixture(scope="module")
def endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint, monkeypatch):
    """A fresh bucket, and settings pointing the lake and MLflow artifacts into it."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)  # MLFLOW_S3_ENDPOINT_URL: restored after the test (the tracker sets it)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = f"cs-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("CHAINSIGNAL_STORAGE__LAKE_URI", f"s3://{name}/lake")
    monkeypatch.setenv("CHAINSIGNAL_STORAGE__ARTIFACTS_URI", f"s3://{name}/mlartifacts")
    monkeypatch.setenv("CHAINSIGNAL_STORAGE__S3_ENDPOINT_URL", endpoint)
    fs().mkdir(name)
    return name


def fs() -> s3fs.S3FileSystem:
    """A client of its own, as another host would have."""
    endpoint = load_settings().storage.s3_endpoint_url
    return s3fs.S3FileSystem(**s3_options(endpoint)["fs"])


def other_host_lake(name: str) -> Lake:
    opts = s3_options(load_settings().storage.s3_endpoint_url)
    return Lake(f"s3://{name}/lake", opts["fs"], opts["polars"])


def prices(n: int) -> pl.DataFrame:
    return pl.DataFrame({
        "date": [DAY] * n, "asset": ["ETH", "BTC"][:n], "open_usd": [1.0] * n, "high_usd": [2.0] * n,
        "low_usd": [0.5] * n, "close_usd": [1.5] * n, "volume_base": [10.0] * n, "source": ["t"] * n,
    }, schema=PRICES)


def test_partition_lifecycle_on_s3(bucket, data_dir):
    lake = workspace(load_settings()).lake
    assert lake.remote and lake.root == f"s3://{bucket}/lake"
    part = lake.open_partition("prices", DAY)
    part.write(prices(2), "old__prices.parquet")
    assert part.has("old__prices.parquet") and not lake.is_complete("prices", DAY)
    assert lake.scan("prices").collect().height == 0  # incomplete days are invisible
    assert part.scan().collect().height == 2
    part.commit({"rows": 2})
    reader = other_host_lake(bucket)
    assert reader.completed_days("prices") == [DAY] and reader.manifest("prices", DAY)["rows"] == 2
    assert reader.scan("prices").collect().height == 2

    staged = lake.open_partition("prices", DAY, overwrite=True)
    staged.write(prices(1), "new__prices.parquet")
    assert reader.scan("prices").collect().height == 2  # readers still see the old day
    staged.commit({"rows": 1})
    assert reader.scan("prices").collect()["asset"].to_list() == ["ETH"]
    keys = sorted(k.split(f"date={DAY}/")[1] for k in fs().find(f"{bucket}/lake/prices"))
    assert len(keys) == 2 and keys[1] == "_manifest.json" and keys[0].endswith("/new__prices.parquet")
    assert reader.manifest("prices", DAY)["files"] == [keys[0]]  # the old file is gone
    assert not (data_dir / "lake").exists()  # nothing of the lake on local disk


def test_ingest_and_build_dataset_flows_on_s3(bucket, data_dir):
    from flows.build_dataset import build_dataset
    from flows.ingest_prices import ingest_prices
    from flows.scrape_tweets import scrape_tweets

    days = (date(2021, 1, 1), date(2021, 1, 31))
    assert ingest_prices(*days)["partitions_done"] == 31
    tweets = scrape_tweets(*days)
    assert tweets["partitions_done"] == 31 and tweets["rows_written"] > 0
    assert ingest_prices(*days)["partitions_skipped"] == 31  # the manifests on S3 say "done"
    assert scrape_tweets(*days)["partitions_skipped"] == 31
    assert not (data_dir / "lake").exists()

    reader = other_host_lake(bucket)
    assert reader.completed_days("posts") == [date(2021, 1, d) for d in range(1, 32)]
    assert reader.scan("posts").collect().height == tweets["rows_written"]
    eth = reader.scan("prices").filter(pl.col("asset") == "ETH").collect()
    assert eth.height == 31 and (eth["high_usd"] >= eth["low_usd"]).all()

    manifest = build_dataset(*days)
    assert manifest["inputs"]["prices"] == 31 and manifest["inputs"]["posts"] == 31
    assert sum(manifest["rows"].values()) > 0


def test_day_block_ranges_are_cached_in_the_lake_for_every_host(bucket, seeded_node):
    from tasks.chain.blockrange import BlockClock
    from tasks.clients.rpc import HttpJsonRpc
    from tests.conftest import CHAIN_START

    node, _ = seeded_node
    settings = load_settings()
    here = BlockClock(HttpJsonRpc(node.url), workspace(settings).block_ranges_cache("local"))
    latest = here.latest()
    found = here.day_range(CHAIN_START, *latest, finality_blocks=64)
    assert found is not None and found.n_blocks > 0
    assert not (settings.storage.data_dir / "cache").exists()  # nothing of it on this host's disk

    rpc = HttpJsonRpc(node.url)
    there = BlockClock(rpc, other_host_lake(bucket).meta("local_day_block_ranges.json"))
    assert there.day_range(CHAIN_START, *latest, finality_blocks=64) == found
    # no search on the other host: the chain's identity (chain id, genesis block) and one check of the
    # cached range's four boundary blocks (tasks/chain/blockrange.py), nothing more
    assert rpc.stats["calls"] <= 2 + 4


def test_mlflow_artifacts_land_in_the_bucket(bucket, data_dir):
    from tasks.tracking.tracker import MlflowTracker

    settings = load_settings()
    tracker = MlflowTracker.from_settings(settings, workspace(settings).mlflow_artifacts_dir())
    with tracker.run(run_name="s3-check") as run_id:
        tracker.log_dict({"verdict": "stored on s3"}, "evaluation/comparison.json")
    uri = tracker.client.get_run(run_id).info.artifact_uri
    assert uri == f"s3://{bucket}/mlartifacts/{settings.tracking.experiment}/{run_id}/artifacts"
    key = f"{uri.removeprefix('s3://')}/evaluation/comparison.json"
    assert json.loads(fs().cat_file(key)) == {"verdict": "stored on s3"}
    back = tracker.download(run_id, "evaluation", data_dir / "back")
    assert json.loads((back / "comparison.json").read_text()) == {"verdict": "stored on s3"}
    assert not (data_dir / "mlartifacts").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_moto_auth(endpoint: str, free_requests: bytes) -> None:
    """moto checks credentials after this many requests ("inf" = never, its default)."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=free_requests,
                                                  method="POST", headers={"Content-Type": "text/plain"}))


def test_unusable_store_is_a_one_line_error_naming_the_setting(bucket, endpoint, monkeypatch):
    monkeypatch.setenv("CHAINSIGNAL_STORAGE__LAKE_URI", "s3://no-such-bucket/lake")
    with pytest.raises(StorageError, match=r"^storage.lake_uri: bucket 'no-such-bucket' does not exist") as err:
        workspace(load_settings())
    assert "\n" not in str(err.value)

    monkeypatch.setenv("CHAINSIGNAL_STORAGE__LAKE_URI", f"s3://{bucket}/lake")
    monkeypatch.setenv("CHAINSIGNAL_STORAGE__S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageError, match=r"cannot reach .* \(storage.s3_endpoint_url\)") as err:
        workspace(load_settings())
    assert "\n" not in str(err.value)

    monkeypatch.setenv("CHAINSIGNAL_STORAGE__S3_ENDPOINT_URL", endpoint)
    set_moto_auth(endpoint, b"0")
    try:  # moto now checks keys against its IAM: "testing" is unknown, as a wrong key would be
        with pytest.raises(StorageError, match=r"^storage.lake_uri: .* refused access .*AWS_ACCESS_KEY_ID") as err:
            workspace(load_settings())
    finally:
        set_moto_auth(endpoint, b"inf")
    assert "testing" not in str(err.value) and "\n" not in str(err.value)

    for bad, why in [("gs://b/lake", "gs:// is not supported"), ("s3://", "needs a bucket")]:
        monkeypatch.setenv("CHAINSIGNAL_STORAGE__LAKE_URI", bad)
        with pytest.raises(SettingsError, match=f"storage.lake_uri.*{why}"):
            load_settings()
