"""The demo seeder reports what its chain holds, and its chain holds every transaction it sent: a small
seed on a real anvil node, its report against the node's own block transaction counts."""

from __future__ import annotations

from datetime import date

import requests

from tasks.chain.localnode import seeded_local_node


def rpc(url: str, method: str, params: list) -> object:
    return requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=10).json()["result"]


def test_the_seed_report_counts_the_transactions_on_chain():
    # 4 days of the demo's shape: before, anvil left 6 of its 155 sent transactions in no block (a legacy
    # sender's later nonce paying more than the earlier one in the same block, then every nonce after it)
    with seeded_local_node(date(2021, 1, 1), date(2021, 1, 4), accounts=20, blocks_per_day=6, mean_txs_per_day=40,
                           seed=7, finality_blocks=4) as (node, report):
        head = int(rpc(node.url, "eth_blockNumber", []), 16)
        on_chain = sum(int(rpc(node.url, "eth_getBlockTransactionCountByNumber", [hex(n)]), 16) for n in range(head + 1))
        waiting = rpc(node.url, "txpool_status", [])
    assert report.blocks == head
    assert report.transactions == on_chain > 0
    assert report.legacy + report.eip1559 == on_chain and report.legacy > 0 and report.eip1559 > 0
    assert report.not_mined == 0 and waiting == {"pending": "0x0", "queued": "0x0"}  # nothing left in the pool
