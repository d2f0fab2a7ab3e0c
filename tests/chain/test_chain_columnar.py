"""Batch answers read by polars straight into columns (the ingest's hot path) give exactly the rows
of the dict path, on recorded mainnet blocks, recorded modern receipts and the local node; and an
answer that is not clean (an error item, a null, a truncated body) falls back to item-by-item
handling with its retries."""

import polars as pl
import pytest

from tasks.chain.stream import ChunkStream
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


def test_an_answer_in_another_order_is_put_back_in_call_order():
    """JSON-RPC lets a node answer a batch's items in any order: the columnar frame comes back in call
    order all the same, with no retry."""
    with ReplayServer(RPC_DATA / "blocks_with_transactions") as replay:
        clean, _ = both_ways(client(replay.url), 0xB872, 0xB873, BLOCKS)
        replay.faults = ["reversed"]
        rpc = client(replay.url)
        with ChunkStream(rpc, [(0xB872, 0xB873)], receipts=False, blocks_per_batch=2) as s:
            got = s.take(0xB872, 0xB873)
    assert isinstance(got.blocks[0], pl.DataFrame) and rpc.stats["retries"] == 0
    blocks, txs = got.frames(1)
    assert blocks["block_number"].to_list() == [0xB872, 0xB873] and txs.equals(clean.frames(1)[1])


def test_a_chunk_of_many_small_batches_maps_like_one_batch():
    """The chunk's columnar pieces are joined before they are mapped (one polars pass, not one per
    batch); a piece that fell back to dicts keeps its place among them."""
    with ReplayServer(RPC_DATA / "blocks_with_transactions") as replay:
        rpc = client(replay.url)
        with ChunkStream(rpc, [(0xB872, 0xB873)], receipts=False, blocks_per_batch=2) as s:
            one = s.take(0xB872, 0xB873)
        replay.faults = ["rpc-32603"]  # the first batch of one block falls back to dicts
        with ChunkStream(client(replay.url), [(0xB872, 0xB873)], receipts=False, blocks_per_batch=1, columnar=True) as s:
            mixed = s.take(0xB872, 0xB873)
    kinds = [type(p).__name__ for p in mixed.blocks]
    assert kinds == ["list", "DataFrame"], kinds
    (b1, t1), (b2, t2) = one.frames(1), mixed.frames(1)
    assert b1.equals(b2) and t1.equals(t2)


class Recording(HttpJsonRpc):
    """The real client; it also notes the method and size of each batch it is asked to send."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, int]] = []

    def batch(self, calls, *args, **kwargs):
        self.sent.append((calls[0][0], len(calls)))
        return super().batch(calls, *args, **kwargs)


def test_blocks_and_receipts_batches_take_turns(seeded_node):
    """Within a chunk the plan alternates a batch of blocks (the node's heavy work) and a batch of
    receipts (the client's), instead of all blocks then all receipts; the chunk still comes out whole,
    in block order, its receipts matching its transactions."""
    node, _ = seeded_node
    rpc = Recording(node.url, requests_per_second=1000, timeout_s=5)
    last = int(rpc.call("eth_blockNumber", []), 16)
    with ChunkStream(rpc, [(1, last)], receipts=True, blocks_per_batch=40, in_flight=1) as s:  # one thread: plan order
        got = s.take(1, last)
    batches = -(-last // 40)
    assert [m for m, _ in rpc.sent] == ["eth_getBlockByNumber", "eth_getBlockReceipts"] * batches
    blocks, txs = got.frames(31337)
    assert blocks["block_number"].to_list() == list(range(1, last + 1)) and txs.height > 0
    assert got.receipts_frame()["transaction_hash"].sort().equals(txs["transaction_hash"].sort())
