"""Batch answers read by polars straight into columns (the ingest's hot path) give exactly the rows
of the dict path, on recorded mainnet blocks, recorded modern receipts and the local node; and an
answer that is not clean (an error item, a null, a truncated body) falls back to item-by-item
handling with its retries."""

import polars as pl
import pytest

from tasks.chain.job import ChunkStream
from tasks.clients.rpc import HttpJsonRpc
from tests.conftest import RPC_DATA, TESTS
from tests.replay import ReplayServer

APIS = TESTS / "data" / "rpc" / "execution-apis"


def client(url: str) -> HttpJsonRpc:
    return HttpJsonRpc(url, requests_per_second=500, timeout_s=2, max_retries=3, backoff_initial_s=0.01,
                       backoff_max_s=0.05)


BLOCKS, RECEIPTS = ("eth_getBlockByNumber",), ("eth_getBlockReceipts",)


def both_ways(rpc, first: int, last: int, methods: tuple[str, ...], batch: int = 50):
    """The same chunk fetched with the columnar decoder, then with the dict path."""
    out = []
    for columnar in (True, False):
        with ChunkStream(rpc, [(first, last)], receipts=False, blocks_per_batch=batch, columnar=columnar,
                         methods=methods) as s:
            out.append(s.take(first, last))
    return out


def test_recorded_mainnet_blocks_same_rows_both_ways():
    with ReplayServer(RPC_DATA / "blocks_with_transactions") as replay:
        fast, slow = both_ways(client(replay.url), 0xB872, 0xB873, BLOCKS)
    assert all(isinstance(p, pl.DataFrame) for p in fast.blocks)  # the columnar path was taken
    assert all(isinstance(p, list) for p in slow.blocks)
    (fb, ft), (sb, st) = fast.frames(1), slow.frames(1)
    assert fb.equals(sb) and ft.equals(st) and ft.height > 0


def test_recorded_block_receipts_same_rows_both_ways():
    with ReplayServer(APIS) as replay:
        rpc = client(replay.url)
        fast, slow = both_ways(rpc, 1, 1, RECEIPTS)
    assert isinstance(fast.receipts[0], pl.DataFrame)
    assert fast.receipts_frame().equals(slow.receipts_frame()) and fast.receipts_frame().height > 0


def test_local_node_same_rows_both_ways(seeded_node):
    node, _ = seeded_node
    rpc = client(node.url)
    last = int(rpc.call("eth_blockNumber", []), 16)
    fast, slow = both_ways(rpc, 1, last, BLOCKS + RECEIPTS, batch=7)
    (fb, ft), (sb, st) = fast.frames(31337), slow.frames(31337)
    assert fb.equals(sb) and ft.equals(st)
    assert fast.receipts_frame().equals(slow.receipts_frame())
    assert ft["to_address"].null_count() > 0 and set(ft["transaction_type"]) == {0, 2}  # creations, both tx types


@pytest.mark.parametrize("fault", ["truncated", "malformed", "rpc-32603", "null"])
def test_unclean_answer_falls_back_and_recovers(fault):
    with ReplayServer(RPC_DATA / "blocks_with_transactions") as replay:
        clean, _ = both_ways(client(replay.url), 0xB872, 0xB873, BLOCKS)
        replay.faults = [fault]
        rpc = client(replay.url)
        with ChunkStream(rpc, [(0xB872, 0xB873)], receipts=False, blocks_per_batch=2) as s:
            got = s.take(0xB872, 0xB873)
    assert rpc.stats["retries"] >= 1  # the faulty answer was handled, not taken as rows
    assert got.frames(1)[1].equals(clean.frames(1)[1])
