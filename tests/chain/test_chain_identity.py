"""The lake never holds a wrong row from the chain: real anvil nodes, the replay proxy, the real flow.

A day stopped mid-way and resumed under another ``rpc.blocks_per_file``; a node swapped for
another chain with the same chain id (and the same genesis) between the stop and the resume;
another network under the same data dir; a reorg deeper than ``finality_blocks`` at the resume
point. Each ends with the lake equal to a clean ingest of what the node serves now, or with a
one-line refusal and nothing written; never one day from two chains, never a block twice.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
import requests

from flows.ingest_chain import ingest_chain
from tasks.chain.blockrange import day_start_ts
from tasks.chain.localnode import seeded_local_node, start_anvil
from tasks.core.errors import ChainMismatchError
from tasks.core.storage import Lake
from tests.replay import ReplayServer

D0, D1 = date(2021, 2, 1), date(2021, 2, 2)
BLOCKS_PER_DAY = 60  # D0 is blocks 1..60, D1 61..120 on the seeded nodes


def seeded(seed: int, chain_id: int = 31337):
    return seeded_local_node(D0, D1, accounts=10, blocks_per_day=BLOCKS_PER_DAY, mean_txs_per_day=150, seed=seed,
                             finality_blocks=64, chain_id=chain_id)


@pytest.fixture(scope="module")
def chain_a():
    with seeded(5) as (node, _):
        yield node


@pytest.fixture(scope="module")
def chain_b():
    """Another chain with the same chain id and the same genesis block as chain_a: other traffic."""
    with seeded(6) as (node, _):
        yield node


def rpc_call(url: str, method: str, params: list):
    got = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=30).json()
    return got["result"]


def frames(data: Path) -> dict[str, pl.DataFrame]:
    lake = Lake(data / "lake")
    return {"blocks": lake.scan("blocks").collect().sort("block_number"),
            "transactions": lake.scan("transactions").collect().sort("block_number", "transaction_index")}


def use(monkeypatch, data: Path, **rpc) -> None:
    monkeypatch.setenv("CHAINSIGNAL_STORAGE__DATA_DIR", str(data))
    for k, v in rpc.items():
        monkeypatch.setenv(f"CHAINSIGNAL_RPC__{k.upper()}", str(v))


def clean_ingest(monkeypatch, data: Path, url: str, *days: date) -> dict[str, pl.DataFrame]:
    use(monkeypatch, data, blocks_per_file=1000)
    ingest_chain(days[0], days[-1], rpc_url=url)
    return frames(data)


def stopped_at(proxy: ReplayServer, block: int) -> None:
    """The provider's quota is gone from the first full-block batch that reaches ``block``: the
    chunks before it are in the lake, the day has no manifest (as after a kill between chunks)."""
    def fault(body):
        asked = [int(c["params"][0], 16) for c in (body if isinstance(body, list) else [body])
                 if c["method"] == "eth_getBlockByNumber" and c["params"][1] is True]
        return "402" if asked and max(asked) >= block else None

    proxy.fault_for = fault


def day_files(data: Path, dataset: str, day: date) -> list[str]:
    return sorted(p.name for p in (data / "lake" / dataset / f"date={day}").glob("*.parquet"))


def assert_each_once_and_equal(got: dict[str, pl.DataFrame], clean: dict[str, pl.DataFrame]) -> None:
    blocks, txs = got["blocks"], got["transactions"]
    dup_blocks = blocks.height - blocks["block_number"].n_unique()
    dup_txs = txs.height - txs["transaction_hash"].n_unique()
    assert (dup_blocks, dup_txs) == (0, 0), f"{dup_blocks} duplicate blocks, {dup_txs} duplicate transactions"
    held = blocks.join(clean["blocks"], on="block_number", how="full", suffix="_clean")
    wrong = held.filter(pl.col("block_hash").ne_missing(pl.col("block_hash_clean"))).height
    assert wrong == 0, f"{wrong} of {clean['blocks'].height} blocks are not the node's"
    assert blocks.equals(clean["blocks"]) and txs.equals(clean["transactions"])


# ----------------------------------------------------------------------------- one plan per day

@pytest.mark.parametrize("plan_recorded", [True, False], ids=["plan-recorded", "stopped-before-plans-existed"])
def test_a_resume_under_another_chunking_never_mixes_plans(chain_a, tmp_path, monkeypatch, plan_recorded):
    clean = clean_ingest(monkeypatch, tmp_path / "clean", chain_a.url, D0)
    cut = tmp_path / "cut"
    use(monkeypatch, cut, blocks_per_file=25, max_concurrent_requests=1)
    with ReplayServer(upstream=chain_a.url) as proxy:
        stopped_at(proxy, 50)  # chunks 1..24 and 25..49 in, 50..60 not
        assert ingest_chain(D0, D0, rpc_url=proxy.url)["partitions_stopped"] == 1
    assert day_files(cut, "blocks", D0) == ["ethereum__blocks__0000000001_0000000024.parquet",
                                            "ethereum__blocks__0000000025_0000000049.parquet"]
    if not plan_recorded:  # a lake stopped by a version that kept no plans: its chunks are planned afresh
        for doc in (cut / "lake" / "_meta" / "day_plans").rglob("*.json"):
            doc.unlink()
    use(monkeypatch, cut, blocks_per_file=1000)
    assert ingest_chain(D0, D0, rpc_url=chain_a.url)["partitions_done"] == 1
    assert_each_once_and_equal(frames(cut), clean)
    lake = Lake(cut / "lake")
    for dataset in ("blocks", "transactions"):
        listed = lake.manifest(dataset, D0)["files"]
        assert listed == day_files(cut, dataset, D0)  # the manifest lists the plan's files, and only they remain
    assert lake.manifest("transactions", D0)["rows"] == clean["transactions"].height
    # with its plan recorded, the day is finished in its own chunking (what was fetched is kept);
    # without one, the settings' chunking replaces the old chunks
    assert len(lake.manifest("blocks", D0)["files"]) == (3 if plan_recorded else 1)


# ----------------------------------------------------------------------------- the chain the lake holds

def test_a_node_swapped_for_another_chain_with_the_same_id_gets_the_day_ingested_again(
        chain_a, chain_b, tmp_path, monkeypatch, caplog):
    genesis = [rpc_call(n.url, "eth_getBlockByNumber", ["0x0", False])["hash"] for n in (chain_a, chain_b)]
    assert genesis[0] == genesis[1]  # same chain id, same genesis: only the hash chain tells them apart
    clean_b = clean_ingest(monkeypatch, tmp_path / "clean", chain_b.url, D0)
    cut = tmp_path / "cut"
    use(monkeypatch, cut, blocks_per_file=25, max_concurrent_requests=1)
    with ReplayServer(upstream=chain_a.url) as proxy:
        stopped_at(proxy, 50)
        ingest_chain(D0, D0, rpc_url=proxy.url)
    assert len(day_files(cut, "blocks", D0)) == 2
    resumed = ingest_chain(D0, D0, rpc_url=chain_b.url)  # the node behind the URL is another chain now
    assert resumed["partitions_done"] == 1
    assert_each_once_and_equal(frames(cut), clean_b)  # the day from chain_b alone
    assert "block 49 in the lake" in caplog.text and resumed["chain_breaks"] == f"{D0} at block 49"


def test_a_swapped_node_after_a_committed_day_is_refused_in_one_line(chain_a, chain_b, tmp_path, monkeypatch):
    """The previous day is in the lake from chain_a: chain_b's next day cannot continue it. The
    resumed day's old chunks go, nothing of chain_b is written, and the line names the block."""
    data = tmp_path / "data"
    use(monkeypatch, data, blocks_per_file=25, max_concurrent_requests=1)
    with ReplayServer(upstream=chain_a.url) as proxy:
        stopped_at(proxy, BLOCKS_PER_DAY + 30)
        ingest_chain(D0, D1, rpc_url=proxy.url)
    lake = Lake(data / "lake")
    assert lake.is_complete("blocks", D0) and day_files(data, "blocks", D1)
    d0 = frames(data)["blocks"].filter(pl.col("block_timestamp").dt.date() == D0)
    with pytest.raises(ChainMismatchError) as err:
        ingest_chain(D0, D1, rpc_url=chain_b.url)
    message = str(err.value)
    assert "\n" not in message and f"block {BLOCKS_PER_DAY + 1}'s parent hash" in message
    assert str(D0) in message and "--overwrite" in message
    assert not lake.is_complete("blocks", D1) and day_files(data, "blocks", D1) == []
    assert day_files(data, "transactions", D1) == []
    assert frames(data)["blocks"].equals(d0)  # the committed day untouched


def lake_bytes(lake: Path) -> dict[str, bytes]:
    return {str(p.relative_to(lake)): p.read_bytes() for p in sorted(lake.rglob("*")) if p.is_file()}


def test_another_network_under_the_same_data_dir_is_refused_and_nothing_written(chain_a, data_dir):
    ingest_chain(D0, D0, rpc_url=chain_a.url)
    lake = data_dir / "lake"
    with seeded(5, chain_id=1337) as (other, _):  # rpc.chain_id is unset: any chain id is accepted alone
        before = lake_bytes(lake)
        with pytest.raises(ChainMismatchError) as err:
            ingest_chain(D1, D1, rpc_url=other.url)
        message = str(err.value)
        assert "\n" not in message and "chain id 31337" in message and "chain id 1337" in message
        assert lake_bytes(lake) == before  # not a file, not the range cache
        # a lake filled before the chain was recorded: its blocks manifests name the chain id
        (lake / "_meta" / "chain.json").unlink()
        before = lake_bytes(lake)
        with pytest.raises(ChainMismatchError):
            ingest_chain(D1, D1, rpc_url=other.url)
        assert lake_bytes(lake) == before
    assert not Lake(lake).is_complete("transactions", D1)


# ----------------------------------------------------------------------------- a reorg deeper than finality

def mine_day(url: str, day: date, blocks: int, salt: int) -> None:
    """``blocks`` blocks at fixed times of ``day``, one transfer each whose value depends on ``salt``:
    the same timestamps (so the same day boundaries), other hashes for another salt."""
    sender, receiver = rpc_call(url, "eth_accounts", [])[:2]
    for i in range(blocks):
        if salt >= 0:
            rpc_call(url, "eth_sendTransaction", [{"from": sender, "to": receiver, "value": hex(1000 * salt + i + 1)}])
        rpc_call(url, "evm_mine", [{"timestamp": day_start_ts(day) + 600 + i * 1200, "blocks": 1}])


def test_a_reorg_deeper_than_finality_at_the_resume_point_reingests_the_day(tmp_path, monkeypatch, caplog):
    node = start_anvil(day_start_ts(D0) - 3600, accounts=2)
    try:
        mine_day(node.url, D0, 30, salt=0)  # blocks 1..30
        snapshot = rpc_call(node.url, "evm_snapshot", [])
        mine_day(node.url, D1, 30, salt=0)  # blocks 31..60
        mine_day(node.url, D1 + timedelta(days=1), 70, salt=-1)  # bury them deeper than finality_blocks
        cut = tmp_path / "cut"
        use(monkeypatch, cut, blocks_per_file=10, max_concurrent_requests=1)
        with ReplayServer(upstream=node.url) as proxy:
            stopped_at(proxy, 50)  # D1's chunks 31..39 and 40..49 in
            ingest_chain(D0, D1, rpc_url=proxy.url)
        assert len(day_files(cut, "blocks", D1)) == 2
        rpc_call(node.url, "evm_revert", [snapshot])  # every block after 30 replaced: 100 blocks deep
        mine_day(node.url, D1, 30, salt=1)
        mine_day(node.url, D1 + timedelta(days=1), 70, salt=-1)
        resumed = ingest_chain(D0, D1, rpc_url=node.url)
        assert resumed["partitions_done"] == 1 and resumed["partitions_skipped"] == 1
        clean = clean_ingest(monkeypatch, tmp_path / "clean", node.url, D0, D1)
    finally:
        node.stop()
    got = frames(cut)
    assert_each_once_and_equal(got, clean)
    assert got["transactions"].height == 60 and set(got["blocks"]["block_number"]) == set(range(1, 61))
    assert "block 49 in the lake" in caplog.text and resumed["chain_breaks"] == f"{D1} at block 49"


def test_status_verify_node_names_the_first_day_the_node_no_longer_serves(tmp_path, monkeypatch):
    """A lake that checks out on its own (every file opens, every parent link holds) but holds a history the node no
    longer serves (a reorg deeper than finality from D1 on; the same for a restarted dev chain): `status --verify`
    alone passes; with `--node` it names D1, the first day the node disagrees on, and repairs D1..D2. Against the
    node that serves the lake: exit 0. A node of another network: its chain named, exit 4. An unreachable node: one
    line, exit 2."""
    from tests.ops.test_ops_status import status

    d2, d3 = D1 + timedelta(days=1), D1 + timedelta(days=2)
    node = start_anvil(day_start_ts(D0) - 3600, accounts=2)
    data = tmp_path / "data"
    try:
        mine_day(node.url, D0, 30, salt=0)  # blocks 1..30
        snapshot = rpc_call(node.url, "evm_snapshot", [])
        mine_day(node.url, D1, 30, salt=0)  # 31..60
        mine_day(node.url, d2, 30, salt=0)  # 61..90
        mine_day(node.url, d3, 70, salt=-1)  # deeper than finality_blocks
        use(monkeypatch, data)
        assert ingest_chain(D0, d2, rpc_url=node.url)["partitions_done"] == 3
        same = status(data, "--verify", "--node", "--rpc-url", node.url)
        assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-2000:]
        assert f"serves the stored chain (its block 90 is the lake's, {d2}" in same.stdout
        rpc_call(node.url, "evm_revert", [snapshot])  # D1 on replaced
        for day, blocks, salt in ((D1, 30, 1), (d2, 30, 1), (d3, 70, -1)):
            mine_day(node.url, day, blocks, salt=salt)
        alone = status(data, "--verify")
        assert alone.returncode == 0  # on its own the lake is one consistent chain
        out = status(data, "--verify", "--node", "--rpc-url", node.url)
        held_60 = frames(data)["blocks"].filter(pl.col("block_number") == 60)["block_hash"][0]
        node_60 = rpc_call(node.url, "eth_getBlockByNumber", [hex(60), False])["hash"]
    finally:
        node.stop()
    assert out.returncode == 4, out.stdout[-3000:] + out.stderr[-2000:]
    (line,) = [ln.strip() for ln in out.stdout.splitlines() if ln.strip().startswith(f"blocks {D1}:")]
    assert line.startswith(f"blocks {D1}: the stored chain: block 60 is {held_60} in the lake but {node_60} there")
    assert f"from {D1} on" in line and line.endswith(f"repair: chainsignal ingest --only chain --start {D1} --end {d2} --overwrite")
    other = start_anvil(day_start_ts(D0) - 3600, accounts=2, chain_id=1337)  # another network altogether
    try:
        elsewhere = status(data, "--verify", "--node", "--rpc-url", other.url)
    finally:
        other.stop()
    assert elsewhere.returncode == 4, elsewhere.stdout[-3000:] + elsewhere.stderr[-2000:]
    (line,) = [ln.strip() for ln in elsewhere.stdout.splitlines() if ln.strip().startswith(f"blocks {D0}:")]
    assert "the lake holds chain id 31337" in line and f"{other.url} serves chain id 1337" in line
    assert line.endswith(f"--start {D0} --end {d2} --overwrite")
    gone = status(data, "--verify", "--node", "--rpc-url", node.url)  # the node is stopped now
    errors = [ln for ln in gone.stderr.splitlines() if ln.startswith("chainsignal: error:")]
    assert gone.returncode == 2 and len(errors) == 1 and "cannot connect" in errors[0], gone.stderr[-2000:]
    assert status(data, "--node").returncode == 2  # --node checks what --verify reads: refused alone


def test_a_commit_checks_the_plans_files_hold_each_block_once(chain_a, tmp_path, monkeypatch):
    """The last check before a day's manifests: the plan's files, read back, hold the day's range
    once (here a chunk file is replaced by a copy of its neighbour's blocks: one line, no manifest)."""
    from tasks.chain.plan import DayPlan, check_day_files
    from tasks.core.errors import DataError

    data = tmp_path / "data"
    use(monkeypatch, data, blocks_per_file=25)
    ingest_chain(D0, D0, rpc_url=chain_a.url)
    lake = Lake(data / "lake")
    m = lake.manifest("blocks", D0)
    plan = DayPlan(D0, m["first_block"], m["last_block"], 25, "ethereum", m["chain_id"], m["genesis_hash"])
    parts = {d: lake.open_partition(d, D0) for d in ("transactions", "blocks")}
    assert check_day_files(parts, plan) == (BLOCKS_PER_DAY, lake.manifest("transactions", D0)["rows"])
    first, second = plan.files("blocks")[:2]
    folder = lake.partition_dir("blocks", D0)
    (folder / second).write_bytes((folder / first).read_bytes())
    with pytest.raises(DataError) as err:
        check_day_files(parts, plan)
    assert "\n" not in str(err.value) and "hold block 1 more than once" in str(err.value) and "--overwrite" in str(err.value)
