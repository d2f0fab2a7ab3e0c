"""Day -> block range on the real seeded anvil node: the interpolation search against brute force."""

import math
import random

from tasks.chain.blockrange import BlockClock
from tasks.clients.rpc import HttpJsonRpc


def test_search_matches_brute_force_and_probes_little(seeded_node):
    node, _ = seeded_node
    rpc = HttpJsonRpc(node.url, requests_per_second=1000)
    latest = int(rpc.call("eth_blockNumber", []), 16)
    blocks = rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in range(latest + 1)])
    ts = [int(b["timestamp"], 16) for b in blocks]
    rng = random.Random(3)
    probes = []
    for _ in range(60):
        target = rng.randint(ts[0] - 10, ts[-1] + 10)
        lo = rng.randint(0, latest // 2)
        expected = next((n for n in range(lo, latest + 1) if ts[n] >= target), latest + 1)
        clock = BlockClock(rpc)
        before = rpc.stats["calls"]
        assert clock.first_block_at_or_after(target, latest, lo=lo) == expected
        probes.append(rpc.stats["calls"] - before)
    bisection = math.ceil(math.log2(latest + 2)) + 1
    assert max(probes) <= 2 * bisection  # the alternation bounds the worst case
    assert sum(probes) / len(probes) < bisection  # and regular block times make it cheaper on average


def test_a_day_over_but_not_deep_enough_is_left_open(seeded_node):
    """The day has ended on the node, but its last block is fewer than finality_blocks deep."""
    from tests.conftest import CHAIN_START

    node, _ = seeded_node
    rpc = HttpJsonRpc(node.url, requests_per_second=1000)
    latest = BlockClock(rpc).latest()
    found = BlockClock(rpc).day_range(CHAIN_START, *latest, finality_blocks=0)
    assert found is not None and found.n_blocks > 0
    depth = latest[0] - found.last_block  # how deep the day's last block is now
    assert BlockClock(rpc).day_range(CHAIN_START, *latest, finality_blocks=depth + 1) is None
    assert BlockClock(rpc).day_range(CHAIN_START, *latest, finality_blocks=depth) == found
