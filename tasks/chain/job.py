"""The block-range job: one UTC day of blocks and transactions into the lake.

It takes its provider (a ChainRpc) and its sink (the Lake) as arguments; the flow only wires.
A day is cut into block chunks; each chunk is one file per dataset and one unit of retry. A
chunk whose files exist is skipped, so a killed run resumes where it stopped; the day's
manifests are written last.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.chain.blockrange import BlockClock, block_chunks
from tasks.chain.mappers import map_blocks_frame, map_receipts_frame
from tasks.clients.rpc import ChainRpc, RpcQuotaError
from tasks.logs import get_logger
from tasks.storage import Lake, block_chunk_name


@dataclass
class DayReport:
    day: str
    status: str  # done | skipped | not_final | stopped | failed
    first_block: int | None = None
    last_block: int | None = None
    blocks: int = 0
    transactions: int = 0
    chunks_written: int = 0
    chunks_skipped: int = 0
    blocks_fetched: int = 0  # in this run (skipped chunks not counted)
    transactions_fetched: int = 0
    requests: int = 0  # HTTP requests of this day, range search and retries included
    credits: int = 0  # credits charged for them
    retries: int = 0
    blocks_per_s: float = 0.0
    txs_per_s: float = 0.0
    seconds: float = 0.0
    stopped_at_block: int | None = None  # first block not yet in the lake when the day stopped
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _batched(rpc: ChainRpc, method: str, first: int, last: int, wanted: int, params, in_flight: int = 1) -> list:
    """``method`` for every block first..last, in batches sized by the client (adaptive, credits),
    up to ``in_flight`` batches at once (the client's buckets still pace them); results in order."""
    plans: list[range] = []
    n = first
    while n <= last:
        size = rpc.batch_size(method, wanted) if hasattr(rpc, "batch_size") else wanted
        plans.append(range(n, min(last, n + size - 1) + 1))
        n = plans[-1][-1] + 1

    def one(numbers: range) -> list:
        # A null block (or receipts list) is retried: nodes behind a load balancer lag.
        return rpc.batch([(method, params(b)) for b in numbers], retry_null=True)

    if in_flight <= 1 or len(plans) == 1:
        return [item for numbers in plans for item in one(numbers)]
    with ThreadPoolExecutor(max_workers=min(in_flight, len(plans)), thread_name_prefix="rpc") as pool:
        return [item for batch in pool.map(one, plans) for item in batch]


def fetch_blocks(rpc: ChainRpc, first: int, last: int, blocks_per_batch: int, in_flight: int = 1) -> list[dict]:
    """Full-transaction blocks first..last (eth_getBlockByNumber(n, true)), batched."""
    return _batched(rpc, "eth_getBlockByNumber", first, last, blocks_per_batch, lambda b: [hex(b), True], in_flight)


def fetch_block_receipts(rpc: ChainRpc, first: int, last: int, blocks_per_batch: int,
                         in_flight: int = 1) -> list[list[dict]]:
    """Receipts of every transaction of blocks first..last (eth_getBlockReceipts), batched."""
    return _batched(rpc, "eth_getBlockReceipts", first, last, blocks_per_batch, lambda b: [hex(b)], in_flight)


def _stat(rpc: ChainRpc, key: str) -> float:
    return getattr(rpc, "stats", {}).get(key, 0)


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
    receipts: bool = False,
    max_concurrent_requests: int = 1,
) -> DayReport:
    log = get_logger()
    t0 = time.perf_counter()
    datasets = ("transactions", "receipts", "blocks") if receipts else ("transactions", "blocks")
    if not overwrite and all(lake.is_complete(d, day) for d in datasets):
        m = lake.manifest("transactions", day) or {}
        return DayReport(day.isoformat(), "skipped", m.get("first_block"), m.get("last_block"),
                         m.get("blocks", 0), m.get("rows", 0))
    base = {k: _stat(rpc, k) for k in ("requests", "credits", "retries")}
    report = DayReport(day.isoformat(), "done")

    def close(status: str) -> DayReport:
        report.status = status
        report.seconds = round(time.perf_counter() - t0, 3)
        for k, v in base.items():
            setattr(report, k, int(_stat(rpc, k) - v))
        if report.seconds > 0:
            report.blocks_per_s = round(report.blocks_fetched / report.seconds, 1)
            report.txs_per_s = round(report.transactions_fetched / report.seconds, 1)
        return report

    try:
        rng = clock.day_range(day, latest[0], latest[1], finality_blocks)
    except RpcQuotaError as err:
        report.error = str(err)
        return close("stopped")
    if rng is None:
        report.error = "day not over or not final on the node yet"
        return close("not_final")
    report.first_block, report.last_block = rng.first_block, rng.last_block
    parts = {d: lake.open_partition(d, day, overwrite) for d in datasets}
    for first, last in block_chunks(rng.first_block, rng.last_block, blocks_per_file):
        names = {d: block_chunk_name(chain, d, first, last) for d in datasets}
        if all(parts[d].has(names[d]) for d in datasets):
            report.chunks_skipped += 1
            continue
        try:
            if receipts:  # blocks and receipts of the chunk fetched side by side
                with ThreadPoolExecutor(max_workers=2, thread_name_prefix="chunk") as pool:
                    half = max(1, max_concurrent_requests // 2)
                    got_receipts = pool.submit(fetch_block_receipts, rpc, first, last, blocks_per_batch, half)
                    raw = fetch_blocks(rpc, first, last, blocks_per_batch, half)
                    raw_receipts = got_receipts.result()
            else:
                raw, raw_receipts = fetch_blocks(rpc, first, last, blocks_per_batch, max_concurrent_requests), None
        except RpcQuotaError as err:
            # Nothing of this chunk is written; the finished chunks stay and the next run resumes.
            report.stopped_at_block, report.error = first, str(err)
            log.warning("%s stopped at block %d: %s", day, first, err)
            return close("stopped")
        blocks_df, txs_df = map_blocks_frame(raw, chain_id)
        parts["transactions"].write(txs_df, names["transactions"])
        if receipts:
            receipts_df = map_receipts_frame(raw_receipts)
            if receipts_df.height != txs_df.height or set(receipts_df["transaction_hash"]) != set(txs_df["transaction_hash"]):
                raise ValueError(f"blocks {first}..{last}: receipts ({receipts_df.height}) do not match transactions ({txs_df.height})")
            parts["receipts"].write(receipts_df, names["receipts"])
        parts["blocks"].write(blocks_df, names["blocks"])  # the blocks file last: chunk done when it exists
        report.chunks_written += 1
        report.blocks_fetched += blocks_df.height
        report.transactions_fetched += txs_df.height
        elapsed = max(1e-9, time.perf_counter() - t0)
        log.info("%s blocks %d..%d of %d..%d: %d txs | %.0f blocks/s, %.0f tx/s, %d credits so far",
                 day, first, last, rng.first_block, rng.last_block, txs_df.height,
                 report.blocks_fetched / elapsed, report.transactions_fetched / elapsed,
                 _stat(rpc, "credits") - base["credits"])
    report.transactions = parts["transactions"].scan().select(pl.len()).collect().item()
    report.blocks = rng.n_blocks
    common = {"first_block": rng.first_block, "last_block": rng.last_block, "chain": chain,
              "chain_id": chain_id, "blocks": rng.n_blocks}
    parts["transactions"].commit({**common, "rows": report.transactions})
    if receipts:
        parts["receipts"].commit({**common, "rows": report.transactions})
    parts["blocks"].commit({**common, "rows": rng.n_blocks})
    return close("done")


DAY_TABLE_COLUMNS = ("day", "status", "blocks", "transactions", "blocks_fetched", "transactions_fetched",
                     "requests", "credits", "retries", "blocks_per_s", "txs_per_s", "stopped_at_block", "error")


def publish_day_table(reports: list[dict], key: str = "ingest-chain-days") -> None:
    """Per-day summary (blocks, txs, requests, credits, speed) as a Prefect table artifact."""
    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    rows = [{c: r.get(c) for c in DAY_TABLE_COLUMNS} for r in reports]
    create_table_artifact(rows, key=key, description="ingest-chain: per UTC day")


# The Prefect task: retries declared here, not hand-written around the call.
ingest_chain_day_task = task(
    ingest_chain_day, name="ingest-chain-day", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE
)
