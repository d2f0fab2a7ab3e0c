"""The block-range job: one UTC day of blocks and transactions into the lake.

It takes its provider (a ChainRpc) and its sink (the Lake) as arguments; the flow only wires.
A day is cut into block chunks; each chunk is one file per dataset and one unit of retry. A
chunk whose files exist is skipped, so a killed run resumes where it stopped; the day's
manifests are written last.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import date

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.chain.blockrange import BlockClock, block_chunks
from tasks.chain.mappers import map_blocks_frame
from tasks.clients.rpc import ChainRpc
from tasks.logs import get_logger
from tasks.storage import Lake, block_chunk_name


@dataclass
class DayReport:
    day: str
    status: str  # done | skipped | not_final | failed
    first_block: int | None = None
    last_block: int | None = None
    blocks: int = 0
    transactions: int = 0
    chunks_written: int = 0
    chunks_skipped: int = 0
    seconds: float = 0.0
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def fetch_blocks(rpc: ChainRpc, first: int, last: int, blocks_per_batch: int) -> list[dict]:
    """Full-transaction blocks first..last, in batches of blocks_per_batch calls."""
    out: list[dict] = []
    for start in range(first, last + 1, blocks_per_batch):
        numbers = range(start, min(last, start + blocks_per_batch - 1) + 1)
        blocks = rpc.batch([("eth_getBlockByNumber", [hex(n), True]) for n in numbers])
        missing = [n for n, b in zip(numbers, blocks) if b is None]
        if missing:
            raise LookupError(f"node returned no block for {missing[:3]}...")
        out.extend(blocks)
    return out


def ingest_chain_day(
    rpc: ChainRpc,
    lake: Lake,
    clock: BlockClock,
    day: date,
    *,
    chain: str,
    chain_id: int,
    latest: tuple[int, int],
    blocks_per_file: int,
    blocks_per_batch: int,
    finality_blocks: int,
    overwrite: bool = False,
) -> DayReport:
    log = get_logger()
    t0 = time.perf_counter()
    if not overwrite and lake.is_complete("transactions", day) and lake.is_complete("blocks", day):
        m = lake.manifest("transactions", day) or {}
        return DayReport(day.isoformat(), "skipped", m.get("first_block"), m.get("last_block"),
                         m.get("blocks", 0), m.get("rows", 0))
    rng = clock.day_range(day, latest[0], latest[1], finality_blocks)
    if rng is None:
        return DayReport(day.isoformat(), "not_final", error="day not over or not final on the node yet")
    report = DayReport(day.isoformat(), "done", rng.first_block, rng.last_block)
    txs_part = lake.open_partition("transactions", day, overwrite)
    blocks_part = lake.open_partition("blocks", day, overwrite)
    for first, last in block_chunks(rng.first_block, rng.last_block, blocks_per_file):
        tx_name = block_chunk_name(chain, "transactions", first, last)
        bl_name = block_chunk_name(chain, "blocks", first, last)
        if txs_part.has(tx_name) and blocks_part.has(bl_name):
            report.chunks_skipped += 1
            continue
        raw = fetch_blocks(rpc, first, last, blocks_per_batch)
        blocks_df, txs_df = map_blocks_frame(raw, chain_id)
        txs_part.write(txs_df, tx_name)
        blocks_part.write(blocks_df, bl_name)  # the blocks file last: chunk done when both exist
        report.chunks_written += 1
        log.info("%s blocks %d..%d: %d transactions", day, first, last, txs_df.height)
    report.transactions = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in txs_part.files())
    report.blocks = rng.n_blocks
    common = {"first_block": rng.first_block, "last_block": rng.last_block, "chain": chain,
              "chain_id": chain_id, "blocks": rng.n_blocks}
    txs_part.commit({**common, "rows": report.transactions})
    blocks_part.commit({**common, "rows": rng.n_blocks})
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


# The Prefect task: retries declared here, not hand-written around the call.
ingest_chain_day_task = task(
    ingest_chain_day, name="ingest-chain-day", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE
)
