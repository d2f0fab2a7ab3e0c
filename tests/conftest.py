"""Shared fixtures: one Prefect test harness and one seeded anvil node per session.

Settings are pointed at temporary folders through CHAINSIGNAL_* variables; MLflow uses a sqlite
file under the data dir. Nothing here reaches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

TESTS = Path(__file__).parent
RPC_DATA = TESTS / "data" / "rpc" / "ethereum-etl"
# A short window of the demo's range: enough labelled days for train/validation/test splits.
CHAIN_START = date(2021, 1, 1)
CHAIN_END = date(2021, 3, 7)


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(tmp_path_factory):
    """A real temporary Prefect server (sqlite) for every flow run in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """Each test gets its own data dir; no CHAINSIGNAL_* leaks in from the caller's shell."""
    for key in list(os.environ):
        if key.startswith("CHAINSIGNAL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CHAINSIGNAL_STORAGE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CHAINSIGNAL_RPC__REQUESTS_PER_SECOND", "1000")
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__SOURCES", '["file"]')  # the bundled sample, not live X/GDELT
    # the sample is a thin slice (51 of the demo's 90 days hold a post): its empty days are zero-post days
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__ACCEPT_EMPTY_DAYS", "true")
    monkeypatch.chdir(tmp_path)  # no stray ./mlruns or chainsignal.toml from the repo
    yield


@pytest.fixture(scope="session")
def seeded_node():
    """anvil seeded once per session with synthetic traffic over CHAIN_START..CHAIN_END."""
    from tasks.chain.localnode import seeded_local_node

    with seeded_local_node(CHAIN_START, CHAIN_END, accounts=20, blocks_per_day=4, mean_txs_per_day=20,
                           seed=11, finality_blocks=64) as (node, report):
        yield node, report


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def ingested_lake(seeded_node, tmp_path_factory) -> Path:
    """daily-ingest over CHAIN_START..CHAIN_END once per session; tests copy the lake they need."""
    from flows.daily_ingest import daily_ingest

    node, _ = seeded_node
    data = tmp_path_factory.mktemp("ingested") / "data"
    env = {"CHAINSIGNAL_STORAGE__DATA_DIR": str(data), "CHAINSIGNAL_TWEETS__SOURCES": '["file"]',
           "CHAINSIGNAL_RPC__REQUESTS_PER_SECOND": "1000", "CHAINSIGNAL_TWEETS__ACCEPT_EMPTY_DAYS": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        daily_ingest(CHAIN_START, CHAIN_END, rpc_url=node.url)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return data / "lake"


@pytest.fixture
def lake_copy(ingested_lake, data_dir) -> Path:
    """This test's own copy of the session's ingested lake, under its data dir."""
    import shutil

    shutil.copytree(ingested_lake, data_dir / "lake")
    return data_dir / "lake"
