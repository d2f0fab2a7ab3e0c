"""ingest-chain through Prefect against a real local anvil node (synthetic seeded traffic)."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from flows.ingest_chain import ingest_chain
from tasks.clients.rpc import HttpJsonRpc
from tasks.core.settings import SettingsError
from tasks.core.storage import Lake
from tests.replay import ReplayServer

DAYS = (date(2021, 1, 10), date(2021, 1, 13))


def node_truth(url: str, lake: Lake, day: date) -> tuple[int, int, set[str]]:
    rpc = HttpJsonRpc(url, requests_per_second=1000)
    m = lake.manifest("transactions", day)
    blocks = rpc.batch([("eth_getBlockByNumber", [hex(n), True]) for n in range(m["first_block"], m["last_block"] + 1)])
    hashes = {t["hash"] for b in blocks for t in b["transactions"]}
    return m["first_block"], m["last_block"], hashes


def test_ingest_matches_node_and_reruns_skip(seeded_node, data_dir):
    node, _ = seeded_node
    first = ingest_chain(*DAYS, rpc_url=node.url)
    assert first["partitions_done"] == 4 and first["rows_written"] > 0
    lake = Lake(data_dir / "lake")
    txs = lake.scan("transactions").collect()
    for i in range(4):
        day = DAYS[0] + timedelta(days=i)
        lo, hi, hashes = node_truth(node.url, lake, day)
        got = txs.filter(pl.col("block_timestamp").dt.date() == day)
        assert set(got["transaction_hash"]) == hashes  # nothing lost, nothing extra
        assert got["block_number"].min() >= lo and got["block_number"].max() <= hi
    assert txs["transaction_hash"].is_unique().all()
    # Blocks outside the day would put rows on the wrong date: the file's date must match.
    assert (txs["block_timestamp"].dt.date().is_between(*DAYS)).all()
    assert set(txs["transaction_type"]) == {0, 2}  # legacy and EIP-1559 senders
    assert txs["to_address"].null_count() > 0  # contract creations

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (table,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-chain-days"])),
                                         limit=1, sort="CREATED_DESC")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["day"] for r in rows] == [str(DAYS[0] + timedelta(days=i)) for i in range(4)]
    assert sum(r["transactions"] for r in rows) == txs.height and all(r["credits"] > 0 for r in rows)
    # One stream prefetches across the days; each day still reports what was spent on it: the
    # days' credits add up to the run's, less its set-up calls (eth_chainId, the genesis block that
    # identifies the chain, the latest block).
    setup = 3 * 80
    assert sum(r["credits"] for r in rows) == first["credits"] - setup
    assert all(r["requests"] > 0 for r in rows) and sum(r["requests"] for r in rows) == first["requests"] - 3
    assert first["blocks_per_s"] > 0 and first["txs_per_s"] > 0 and first["credits"] > 0

    again = ingest_chain(*DAYS, rpc_url=node.url)
    assert again["partitions_skipped"] == 4 and again.get("partitions_done", 0) == 0
    assert lake.scan("transactions").collect().height == txs.height  # never appended twice


def test_killed_run_resumes_and_overwrite_rebuilds(seeded_node, data_dir, monkeypatch):
    node, _ = seeded_node
    monkeypatch.setenv("CHAINSIGNAL_RPC__BLOCKS_PER_FILE", "2")  # several chunk files per day
    day = DAYS[0]
    ingest_chain(day, day, rpc_url=node.url)
    lake = Lake(data_dir / "lake")
    part = lake.partition_dir("transactions", day)
    files = sorted(part.glob("*.parquet"))
    assert len(files) >= 2
    before = lake.scan("transactions").collect().sort("transaction_hash")
    # Simulate a kill after the first chunk: the manifests and the later chunks are gone.
    (part / "_manifest.json").unlink()
    (lake.partition_dir("blocks", day) / "_manifest.json").unlink()
    for f in files[1:]:
        f.unlink()
    first_mtime = files[0].stat().st_mtime_ns
    resumed = ingest_chain(day, day, rpc_url=node.url)
    assert resumed["partitions_done"] == 1
    assert files[0].stat().st_mtime_ns == first_mtime  # the finished chunk was not fetched again
    after = lake.scan("transactions").collect().sort("transaction_hash")
    assert after.equals(before)
    rebuilt = ingest_chain(day, day, overwrite=True, rpc_url=node.url)
    assert rebuilt["partitions_done"] == 1
    assert lake.scan("transactions").collect().sort("transaction_hash").equals(before)


def test_day_not_over_on_the_node_is_not_marked_done(seeded_node, data_dir):
    node, _ = seeded_node
    future = date(2021, 6, 1)
    summary = ingest_chain(future, future, rpc_url=node.url)
    assert summary["partitions_not_final"] == 1
    assert not Lake(data_dir / "lake").is_complete("transactions", future)


# ----------------------------------------------------------------------------- receipts, quota, budget, kill -9

DAY = DAYS[0]
SECRET = "k3y-s3cr3t-0042"


def lake_frames(data: Path, *datasets: str) -> dict[str, pl.DataFrame]:
    lake = Lake(data / "lake")
    return {d: lake.scan(d).collect().sort("block_number", *(["transaction_index"] if d != "blocks" else []))
            for d in datasets}


def test_receipts_join_transactions(seeded_node, data_dir, monkeypatch):
    node, _ = seeded_node
    monkeypatch.setenv("CHAINSIGNAL_RPC__RECEIPTS", "true")
    summary = ingest_chain(DAY, DAY + timedelta(days=1), rpc_url=node.url)
    assert summary["partitions_done"] == 2
    f = lake_frames(data_dir, "transactions", "receipts")
    joined = f["transactions"].join(f["receipts"], on="transaction_hash", how="inner", suffix="_r")
    assert joined.height == f["transactions"].height == f["receipts"].height > 0
    assert (joined["block_number"] == joined["block_number_r"]).all()
    assert (joined["status"] == 1).all() and (joined["gas_used"] >= 21_000).all()
    assert (joined["gas_used"] <= joined["gas_limit"]).all() and (joined["effective_gas_price_wei"] > 0).all()
    # contract creations got an address, calls did not
    assert (joined["to_address"].is_null() == joined["contract_address"].is_not_null()).all()


def test_receipts_that_do_not_match_write_nothing_and_the_rerun_completes(seeded_node, tmp_path):
    """A node whose receipts do not cover the blocks' transactions (here each receipts answer loses
    one) stops the day with a one-line error before any file of those blocks is written; the next
    run fetches them again and completes."""
    from tasks.chain.blockrange import BlockClock
    from tasks.chain.job import ChainJobConfig, ingest_chain_day

    node, _ = seeded_node
    lake = Lake(tmp_path / "lake")
    config = ChainJobConfig(chain="ethereum", chain_id=31337, blocks_per_file=1000, blocks_per_batch=25,
                            finality_blocks=64, receipts=True)
    with ReplayServer(upstream=node.url) as proxy:
        def run():
            rpc = HttpJsonRpc(proxy.url, requests_per_second=1000)
            clock = BlockClock(rpc)
            return ingest_chain_day(rpc, lake, clock, DAY, config, latest=clock.latest())

        proxy.fault_for = lambda body: ("receipts-short" if isinstance(body, list)
                                        and body[0]["method"] == "eth_getBlockReceipts" else None)
        with pytest.raises(ValueError) as err:
            run()
        message = str(err.value)
        assert "do not match" in message and str(DAY) in message and "\n" not in message
        assert not list((tmp_path / "lake").rglob("*.parquet"))  # nothing of those blocks was written
        proxy.fault_for = None
        report = run()
    assert report.status == "done" and report.transactions > 0
    f = lake_frames(tmp_path, "transactions", "receipts")
    assert f["receipts"]["transaction_hash"].sort().equals(f["transactions"]["transaction_hash"].sort())


def _settings_env(monkeypatch, **values):
    for k, v in values.items():
        monkeypatch.setenv(f"CHAINSIGNAL_RPC__{k.upper()}", str(v))


def _prefect_logs(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        arts = client.read_artifacts()
    return "\n".join(rec.message for rec in logs) + "\n".join(str(a.data) for a in arts)


def test_a_key_in_the_rpc_url_parameter_is_refused_before_anything_is_sent(data_dir):
    key = "9f2c4e1a7b3d5f60812a4c6e8b0d2f47"
    with ReplayServer() as server:
        with pytest.raises(SettingsError) as err:
            ingest_chain(DAY, DAY, rpc_url=f"{server.url}/v3/{key}")
        assert not server.requests
    message = str(err.value)
    assert "\n" not in message and key not in message and "rpc.api_key" in message


def test_quota_402_stops_cleanly_then_resumes_to_the_clean_result(seeded_node, tmp_path, monkeypatch, caplog):
    node, _ = seeded_node
    # One batch in flight, so "nothing sent after the 402" is exact (with more, the batches already
    # on the wire when it arrives still go; the client's latch stops every later one).
    _settings_env(monkeypatch, blocks_per_file=1, api_key=SECRET, backoff_initial_s=0.01, backoff_max_s=0.05,
                  max_concurrent_requests=1)
    with ReplayServer(upstream=node.url) as proxy:
        url = proxy.url + "/v3/{api_key}"
        clean_dir = tmp_path / "clean"
        monkeypatch.setenv("CHAINSIGNAL_STORAGE__DATA_DIR", str(clean_dir))
        ingest_chain(DAY, DAY, rpc_url=url)
        clean = lake_frames(clean_dir, "transactions", "blocks")
        assert clean["blocks"].height >= 3

        monkeypatch.setenv("CHAINSIGNAL_STORAGE__DATA_DIR", str(tmp_path / "cut"))
        proxy.requests.clear()
        # transient faults first (retried), then the quota is gone at the third chunk's batch
        first = clean["blocks"]["block_number"].min()

        def batch_of(body) -> list[int]:  # the blocks a full-block batch asks for
            return [int(c["params"][0], 16) for c in (body if isinstance(body, list) else [])
                    if c["method"] == "eth_getBlockByNumber" and c["params"][1] is True]

        proxy.faults = ["429", "500"]
        proxy.fault_for = lambda body: "402" if first + 2 in batch_of(body) else None
        state = ingest_chain(DAY, DAY + timedelta(days=1), rpc_url=url, return_state=True)
        cut = state.result()
        assert cut["partitions_stopped"] == 2  # the day, and the next day not even started
        assert cut["stopped_at"] == f"{DAY} block {first + 2}"
        assert not Lake(tmp_path / "cut" / "lake").is_complete("transactions", DAY)
        asked = [b for r in proxy.requests for b in batch_of(r["body"])]
        assert asked.count(first + 2) == 1  # the 402 is not retried
        assert max(asked) == first + 2  # and no block batch went out after it (one batch in flight)
        proxy.fault_for = None
        prefect_text = _prefect_logs(state.state_details.flow_run_id)
        assert f"stopped at block {first + 2}" in prefect_text  # the run's logs as the Prefect server holds them
        text = prefect_text + caplog.text + json.dumps(cut)
        assert "HTTP 402" in text and SECRET not in text
        assert all(r["path"] == f"/v3/{SECRET}" for r in proxy.requests)  # the key did reach the server

        resumed = ingest_chain(DAY, DAY, rpc_url=url)
        assert resumed["partitions_done"] == 1 and resumed["blocks_fetched"] == clean["blocks"].height - 2
    got = lake_frames(tmp_path / "cut", "transactions", "blocks")
    assert got["transactions"].equals(clean["transactions"]) and got["blocks"].equals(clean["blocks"])


def test_daily_credit_budget_stops_and_next_run_resumes(seeded_node, data_dir, monkeypatch):
    node, _ = seeded_node
    _settings_env(monkeypatch, blocks_per_file=1)
    with ReplayServer(upstream=node.url) as proxy:
        clean = ingest_chain(DAY, DAY, rpc_url=proxy.url)  # to learn the day's cost
        total = clean["credits"]
        n_blocks = clean["blocks_fetched"]
    for ds in ("transactions", "blocks"):
        (Lake(data_dir / "lake").partition_dir(ds, DAY) / "_manifest.json").unlink()
        for p in Lake(data_dir / "lake").partition_dir(ds, DAY).glob("*.parquet"):
            p.unlink()
    ledger = data_dir / "cache" / "ethereum_credits_by_utc_day.json"
    ledger.unlink()
    # the day's range is cached now: eth_chainId + the genesis block + latest block, the four blocks
    # at the cached range's boundaries (checked before use), then 80 credits a block; enough for
    # everything but the last two blocks
    budget = 3 * 80 + 4 * 80 + (n_blocks - 2) * 80
    # One batch in flight, so the budget admits exactly the first n - 2 blocks: with more, batches
    # charge the ledger in the order their threads reach it, and a later block may take the last
    # credits (fetched, not written: the run stops at the first block missing, and resumes there).
    _settings_env(monkeypatch, daily_credit_budget=budget, max_concurrent_requests=1)
    with ReplayServer(upstream=node.url) as proxy:
        cut = ingest_chain(DAY, DAY, rpc_url=proxy.url)
        assert cut["partitions_stopped"] == 1 and cut["blocks_fetched"] == n_blocks - 2
        assert cut["credits_spent_today_utc"] == budget and "budget spent" in cut["stopped_because"]
        proxy.requests.clear()
        again = ingest_chain(DAY, DAY, rpc_url=proxy.url)  # same UTC day, same budget: still stopped
        assert again["partitions_stopped"] == 1 and not proxy.requests  # and nothing was sent
        _settings_env(monkeypatch, daily_credit_budget=total * 3)
        proxy.requests.clear()
        done = ingest_chain(DAY, DAY, rpc_url=proxy.url)
        assert done["partitions_done"] == 1
        assert done["blocks_fetched"] == n_blocks - cut["blocks_fetched"]  # finished chunks not fetched again
    f = lake_frames(data_dir, "blocks")
    assert f["blocks"].height == n_blocks and f["blocks"]["block_number"].is_unique().all()


CHILD = """
import sys
from dataclasses import replace
from datetime import date
from tasks.core.settings import load_settings
from tasks.core.storage import Workspace
from tasks.clients.rpc import HttpJsonRpc
from tasks.chain.blockrange import BlockClock
from tasks.chain.job import ChainJobConfig, ingest_chain_day
s = load_settings(); ws = Workspace(s.storage.data_dir)
rpc = HttpJsonRpc.from_settings(s.rpc)
clock = BlockClock(rpc, ws.block_ranges_cache(s.rpc.chain))
chain_id = int(rpc.call("eth_chainId", []), 16); latest = clock.latest()
config = replace(ChainJobConfig.from_settings(s.rpc, chain_id), max_concurrent_requests=1)  # one batch in flight
for d in sys.argv[1:]:
    ingest_chain_day(rpc, ws.lake, clock, date.fromisoformat(d), config, latest=latest)
"""


def test_sigkill_mid_day_then_resume_equals_a_clean_run(seeded_node, tmp_path, monkeypatch):
    node, _ = seeded_node
    days = [DAY, DAY + timedelta(days=1)]
    monkeypatch.setenv("CHAINSIGNAL_RPC__BLOCKS_PER_FILE", "1")
    monkeypatch.setenv("CHAINSIGNAL_RPC__RECEIPTS", "true")  # the three tables, killed and resumed together
    monkeypatch.setenv("CHAINSIGNAL_STORAGE__DATA_DIR", str(tmp_path / "clean"))
    ingest_chain(*days, rpc_url=node.url)
    clean = lake_frames(tmp_path / "clean", "transactions", "blocks", "receipts")

    killed = tmp_path / "killed"
    env = {**os.environ, "CHAINSIGNAL_STORAGE__DATA_DIR": str(killed), "CHAINSIGNAL_RPC__URL": node.url,
           "CHAINSIGNAL_RPC__REQUESTS_PER_SECOND": "6", "CHAINSIGNAL_RPC__BLOCKS_PER_FILE": "1",
           "CHAINSIGNAL_RPC__RECEIPTS": "true"}
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", CHILD, *map(str, days)], env=env, cwd=repo,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    second_day = killed / "lake" / "transactions" / f"date={days[1]}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(second_day.glob("*.parquet"))) < 2 and child.poll() is None:
        time.sleep(0.02)
    assert child.poll() is None, child.stderr.read().decode()[-500:]
    os.kill(child.pid, signal.SIGKILL)  # mid-day: the second day has some chunks, no manifest
    child.wait()
    assert not Lake(killed / "lake").is_complete("transactions", days[1])
    written = len(list(second_day.glob("*.parquet")))
    assert 2 <= written < clean["blocks"].filter(pl.col("block_timestamp").dt.date() == days[1]).height

    monkeypatch.setenv("CHAINSIGNAL_STORAGE__DATA_DIR", str(killed))
    resumed = ingest_chain(*days, rpc_url=node.url)
    assert resumed["partitions_done"] + resumed.get("partitions_skipped", 0) == 2
    got = lake_frames(killed, "transactions", "blocks", "receipts")
    assert got["transactions"].equals(clean["transactions"])  # row for row: no gap, no duplicate
    assert got["blocks"].equals(clean["blocks"])
    assert got["receipts"].height == clean["transactions"].height and got["receipts"].equals(clean["receipts"])


def test_progress_bar_shows_blocks_and_tx_per_second(seeded_node, data_dir):
    """On a terminal the day's bar counts blocks (tqdm's block/s) and shows tx/s and credits."""
    import io

    from tasks.chain.blockrange import BlockClock
    from tasks.chain.job import ChainJobConfig, ingest_chain_day
    from tasks.core.storage import Workspace

    node, _ = seeded_node
    ws = Workspace(data_dir)
    rpc = HttpJsonRpc(node.url, requests_per_second=1e6)
    clock = BlockClock(rpc, ws.block_ranges_cache("local"))
    out = io.StringIO()
    import tasks.chain.job as job

    real = job.progress
    job.progress = lambda *a, **k: real(*a, **{**k, "disable": False})  # as on a terminal
    try:
        config = ChainJobConfig(chain="local", chain_id=31337, blocks_per_file=2, blocks_per_batch=2, finality_blocks=64)
        report = ingest_chain_day(rpc, ws.lake, clock, DAYS[0], config, latest=clock.latest(), progress_file=out)
    finally:
        job.progress = real
    text = out.getvalue()
    assert report.status == "done" and f"{report.blocks}/{report.blocks}" in text
    assert "block/s" in text and "tx/s" in text and "credits" in text
