"""The optional Prefect global concurrency limit path, against the session's real Prefect server.

Slots are credits: every batch occupies its credit cost (``rate_limit(name, occupy=credits,
strict=True)``) and slots decay at the plan's credits per second, so workers sharing one key
share one pace. The limit is created by ``ensure_credit_limit`` (the setup command calls it).
"""

import pytest
from prefect.client.orchestration import get_client

from flows.ingest_chain import ingest_chain
from tasks.chain.stream import fetch_blocks
from tasks.clients.limits import ensure_credit_limit, ensure_credit_limit_from_settings
from tasks.clients.rpc import HttpJsonRpc
from tasks.core.errors import RpcError
from tasks.core.settings import load_settings
from tests.conftest import CHAIN_START, RPC_DATA
from tests.replay import ReplayServer


def read_limit(name: str):
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def test_setup_creates_and_updates_the_credit_limit():
    got = ensure_credit_limit("chain-credits-setup", credits_per_second=500)
    assert got == {"name": "chain-credits-setup", "limit": 500, "slot_decay_per_second": 500.0}
    again = ensure_credit_limit("chain-credits-setup", credits_per_second=250, burst_credits=1000)
    assert again["limit"] == 1000 and again["slot_decay_per_second"] == 250.0


def test_batches_occupy_their_credits_in_the_shared_limit():
    ensure_credit_limit("chain-credits-slow", credits_per_second=5, burst_credits=2000)  # slots barely decay
    with ReplayServer(RPC_DATA / "blocks_with_transactions") as replay:
        rpc = HttpJsonRpc(replay.url, requests_per_second=1000, credits_per_second=100_000,
                          method_credits={"eth_getBlockByNumber": 80}, concurrency_limit="chain-credits-slow")
        for _ in range(3):
            fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    assert rpc.stats["credits"] == 480
    assert 400 <= read_limit("chain-credits-slow").active_slots <= 480


def test_missing_limit_is_a_one_line_error_before_any_request():
    with ReplayServer(RPC_DATA / "blocks_with_transactions") as replay:
        rpc = HttpJsonRpc(replay.url, credits_per_second=500, concurrency_limit="no-such-limit")
        with pytest.raises(RpcError) as err:
            rpc.call("eth_getBlockByNumber", ["0xb872", True])
        assert not replay.requests
    assert "no-such-limit" in str(err.value) and "setup command" in str(err.value) and "\n" not in str(err.value)


def test_flow_paces_through_the_limit(seeded_node, monkeypatch):
    node, _ = seeded_node
    ensure_credit_limit("chain-credits-flow", credits_per_second=200_000)
    monkeypatch.setenv("CHAINSIGNAL_RPC__CREDITS_PER_SECOND", "200000")
    monkeypatch.setenv("CHAINSIGNAL_RPC__CONCURRENCY_LIMIT", "chain-credits-flow")
    monkeypatch.setenv("CHAINSIGNAL_RPC__BLOCKS_PER_BATCH", "1")  # several batches in flight, from threads
    summary = ingest_chain(CHAIN_START, CHAIN_START, rpc_url=node.url)
    assert summary["partitions_done"] == 1 and summary["credits"] > 0 and summary["blocks_fetched"] >= 2


def test_setup_from_settings(monkeypatch):
    assert ensure_credit_limit_from_settings(load_settings().rpc) is None  # off by default
    monkeypatch.setenv("CHAINSIGNAL_RPC__CREDITS_PER_SECOND", "500")
    monkeypatch.setenv("CHAINSIGNAL_RPC__CONCURRENCY_LIMIT", "infura-free")
    got = ensure_credit_limit_from_settings(load_settings().rpc)
    assert got == {"name": "infura-free", "limit": 1000, "slot_decay_per_second": 500.0}  # room for one receipts call
