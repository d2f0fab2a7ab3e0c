"""ingest-chain: Ethereum blocks and transactions for UTC days, into the lake.

Produces ``lake/transactions`` and ``lake/blocks`` partitions (one per day, files per block chunk).
Resumable and idempotent: complete days and existing chunks are skipped; ``overwrite`` rebuilds.

Run locally:  chainsignal ingest --only chain --start 2021-01-01 --end 2021-01-07
"""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.common import settings_for, workspace
from tasks.chain.blockrange import BlockClock
from tasks.chain.job import ingest_chain_day_task
from tasks.clients.rpc import HttpJsonRpc
from tasks.runs import publish_summary, resolve_days, started, summarize


@flow(name="ingest-chain", log_prints=True)
def ingest_chain(start: date | None = None, end: date | None = None, overwrite: bool = False,
                 rpc_url: str | None = None) -> dict:
    t0 = started()
    settings = settings_for(rpc={"url": rpc_url} if rpc_url else None)
    ws = workspace(settings)
    rpc = HttpJsonRpc.from_settings(settings.rpc)
    clock = BlockClock(rpc, ws.block_ranges_cache(settings.rpc.chain))
    chain_id = int(rpc.call("eth_chainId", []), 16)
    latest = clock.latest()
    reports = [
        ingest_chain_day_task(
            rpc, ws.lake, clock, day, chain=settings.rpc.chain, chain_id=chain_id, latest=latest,
            blocks_per_file=settings.rpc.blocks_per_file, blocks_per_batch=settings.rpc.blocks_per_batch,
            finality_blocks=settings.rpc.finality_blocks, overwrite=overwrite,
        ).as_dict()
        for day in resolve_days(start, end)
    ]
    summary = summarize("ingest-chain", reports, t0, endpoint=rpc.url, chain_id=chain_id,
                        requests=rpc.stats["requests"], retries=rpc.stats["retries"])
    publish_summary(summary, "ingest-chain summary", reports)
    return summary
