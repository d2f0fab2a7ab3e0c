"""The block-range job: one UTC day of blocks and transactions into the lake.

It takes its provider (a ChainRpc) and its sink (the Lake) as arguments; the flow only wires.
A day is cut into block chunks; each chunk is one file per dataset and one unit of retry. A
chunk whose files exist is skipped, so a killed run resumes where it stopped; the day's
manifests are written last. The chunks' blocks come from a :class:`~tasks.chain.stream.ChunkStream`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import IO, Any

import polars as pl
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from tasks.chain.blockrange import BlockClock, DayBlocks, block_chunks
from tasks.chain.stream import Chunk, ChunkStream
from tasks.clients.rpc import ChainRpc
from tasks.core.errors import RpcQuotaError
from tasks.core.logs import get_logger
from tasks.core.progress import progress
from tasks.core.settings import RpcSettings
from tasks.core.storage import Lake, Partition, block_chunk_name


@dataclass(frozen=True)
class ChainJobConfig:
    """How the day job fetches a chain and files it: built once per run from the ``rpc`` settings
    section and the chain id the endpoint reported (``from_settings``)."""

    chain: str  # name in the lake's file names
    chain_id: int  # written into every block row and manifest
    blocks_per_file: int  # one file = one unit of retry
    blocks_per_batch: int  # calls per JSON-RPC batch (the client may send fewer: adaptive, credit-paced)
    finality_blocks: int  # a day is ingested only once this deep
    receipts: bool = False  # also eth_getBlockReceipts into lake/receipts
    max_concurrent_requests: int = 1  # batches in flight at once

    @classmethod
    def from_settings(cls, rpc: RpcSettings, chain_id: int) -> ChainJobConfig:
        return cls(chain=rpc.chain, chain_id=chain_id, blocks_per_file=rpc.blocks_per_file,
                   blocks_per_batch=rpc.blocks_per_batch, finality_blocks=rpc.finality_blocks, receipts=rpc.receipts,
                   max_concurrent_requests=rpc.max_concurrent_requests)

    @property
    def datasets(self) -> tuple[str, ...]:
        """The lake datasets a day fills, the blocks last (a chunk is done when its blocks file exists)."""
        return ("transactions", "receipts", "blocks") if self.receipts else ("transactions", "blocks")


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


def _day_complete(lake: Lake, day: date, config: ChainJobConfig) -> bool:
    return all(lake.is_complete(d, day) for d in config.datasets)


def _missing(parts: dict[str, Partition], chain: str, chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The chunks whose files are not all in the open partitions ``parts`` (dataset -> Partition)."""
    return [(a, b) for a, b in chunks if not all(p.has(block_chunk_name(chain, d, a, b)) for d, p in parts.items())]


def pending_chunks(lake: Lake, day: date, first: int, last: int, config: ChainJobConfig,
                   overwrite: bool = False) -> list[tuple[int, int]]:
    """The chunks of a day's block range whose files are not all in the lake yet."""
    chunks = list(block_chunks(first, last, config.blocks_per_file))
    if overwrite:
        return chunks
    return _missing({d: lake.open_partition(d, day) for d in config.datasets}, config.chain, chunks)


def plan_days(lake: Lake, clock: BlockClock, days: Sequence[date], latest: tuple[int, int], config: ChainJobConfig,
              overwrite: bool = False) -> Iterator[tuple[int, int]]:
    """Every chunk still to fetch for ``days``, in order: the plan of one ChunkStream shared by the days.

    Lazy: a day's range is resolved only when the stream's window reaches it, so a run that stops
    early has asked nothing about the days after. Days already complete contribute nothing; the
    plan ends at a day not final yet or when the range search hits the quota (that day's own
    run then reports why)."""
    for day in days:
        if not overwrite and _day_complete(lake, day, config):
            continue
        try:
            rng = clock.day_range(day, latest[0], latest[1], config.finality_blocks)
        except RpcQuotaError:
            return
        if rng is None:
            return  # later days are not final either
        yield from pending_chunks(lake, day, rng.first_block, rng.last_block, config, overwrite)


def stream_for_days(rpc: ChainRpc, lake: Lake, clock: BlockClock, days: Sequence[date], latest: tuple[int, int],
                    config: ChainJobConfig, overwrite: bool = False) -> ChunkStream:
    """One ChunkStream over every chunk still to fetch for ``days`` (see ``plan_days``)."""
    plan = plan_days(lake, clock, days, latest, config, overwrite)
    return ChunkStream(rpc, plan, receipts=config.receipts, blocks_per_batch=config.blocks_per_batch,
                       in_flight=config.max_concurrent_requests)


def ingest_chain_day(rpc: ChainRpc, lake: Lake, clock: BlockClock, day: date, config: ChainJobConfig, *,
                     latest: tuple[int, int], overwrite: bool = False, stream: ChunkStream | None = None,
                     progress_file: IO[str] | None = None) -> DayReport:
    """One UTC day into the lake; ``latest`` is the node's (number, timestamp) of its latest block.

    Its report's requests, credits and retries are the ones spent on this day - its range search
    and its chunks' batches, whichever thread sent them - not whatever the shared client sent
    meanwhile. ``stream``: a ChunkStream over several days' plan (``stream_for_days``), used when
    its next chunks are this day's, so the node stays busy across day boundaries; otherwise the
    day streams its own chunks."""
    with rpc.tally() as sent:
        t0 = time.perf_counter()
        if not overwrite and _day_complete(lake, day, config):
            m = lake.manifest("transactions", day) or {}
            return DayReport(day.isoformat(), "skipped", m.get("first_block"), m.get("last_block"),
                             m.get("blocks", 0), m.get("rows", 0))
        run = _DayRun(day, config, DayReport(day.isoformat(), "done"), sent, t0)
        try:
            rng = clock.day_range(day, latest[0], latest[1], config.finality_blocks)
        except RpcQuotaError as err:
            return run.close("stopped", error=str(err))
        if rng is None:
            return run.close("not_final", error="day not over or not final on the node yet")
        run.report.first_block, run.report.last_block = rng.first_block, rng.last_block
        parts = {d: lake.open_partition(d, day, overwrite) for d in config.datasets}
        chunks = list(block_chunks(rng.first_block, rng.last_block, config.blocks_per_file))
        todo = _missing(parts, config.chain, chunks)  # an overwrite's partitions are fresh: every chunk
        run.report.chunks_skipped = len(chunks) - len(todo)
        if not _fetch_and_write(rpc, run, rng, parts, todo, stream, progress_file):
            return run.close("stopped")
        _commit_day(run.report, rng, parts, config)
        return run.close("done")


@dataclass
class _DayRun:
    """One day under way: its report, and what it has spent so far (``sent``: its range search and
    its chunks' batches, which ``ChunkStream.take`` adopts into this thread's tally)."""

    day: date
    config: ChainJobConfig
    report: DayReport
    sent: dict[str, float]
    t0: float
    log: Any = field(default_factory=get_logger, repr=False)

    def spent(self, key: str) -> int:
        return int(self.sent.get(key, 0))

    def close(self, status: str, error: str | None = None) -> DayReport:
        report = self.report
        report.status = status
        if error is not None:
            report.error = error
        report.seconds = round(time.perf_counter() - self.t0, 3)
        for k in ("requests", "credits", "retries"):
            setattr(report, k, self.spent(k))
        if report.seconds > 0:
            report.blocks_per_s = round(report.blocks_fetched / report.seconds, 1)
            report.txs_per_s = round(report.transactions_fetched / report.seconds, 1)
        return report

    def chunk_written(self, first: int, last: int, blocks: int, txs: int, rng: DayBlocks, bar: Any) -> None:
        report = self.report
        report.chunks_written += 1
        report.blocks_fetched += blocks
        report.transactions_fetched += txs
        elapsed = max(1e-9, time.perf_counter() - self.t0)
        bar.update(blocks)
        bar.set_postfix_str(f"{report.transactions_fetched / elapsed:,.0f} tx/s, {self.spent('credits'):,} credits",
                            refresh=False)
        self.log.info("%s blocks %d..%d of %d..%d: %d txs | %.0f blocks/s, %.0f tx/s, %d credits so far",
                          self.day, first, last, rng.first_block, rng.last_block, txs,
                          report.blocks_fetched / elapsed, report.transactions_fetched / elapsed,
                          self.spent("credits"))


def _fetch_and_write(rpc: ChainRpc, run: _DayRun, rng: DayBlocks, parts: dict[str, Partition],
                     todo: list[tuple[int, int]], stream: ChunkStream | None, progress_file: IO[str] | None) -> bool:
    """Every chunk of ``todo``, in order, fetched (from ``stream`` when its next chunks are these,
    else from a stream of the day's own), checked and written; False when the quota stopped the day."""
    config = run.config
    bar = progress(rng.n_blocks, str(run.day), "block", initial=rng.n_blocks - sum(b - a + 1 for a, b in todo),
                   file=progress_file)
    own = None
    if todo and (stream is None or not stream.upcoming(todo)):
        stream = own = ChunkStream(rpc, todo, receipts=config.receipts, blocks_per_batch=config.blocks_per_batch,
                                   in_flight=config.max_concurrent_requests)
    try:
        for first, last in todo:
            try:
                chunk = stream.take(first, last)
                if chunk is None:
                    raise RuntimeError(f"{run.day}: the block stream is out of step at block {first}")
            except RpcQuotaError as err:
                # Nothing of this chunk is written; the finished chunks stay and the next run resumes.
                run.report.stopped_at_block, run.report.error = first, str(err)
                run.log.warning("%s stopped at block %d: %s", run.day, first, err)
                return False
            blocks, txs = _write_chunk(chunk, parts, run.day, first, last, config)
            run.chunk_written(first, last, blocks, txs, rng, bar)
    finally:
        bar.close()
        if own is not None:
            own.close()
    return True


def _write_chunk(chunk: Chunk, parts: dict[str, Partition], day: date, first: int, last: int,
                 config: ChainJobConfig) -> tuple[int, int]:
    """One chunk mapped, checked and written, the blocks file last; (blocks, transactions) written."""
    names = {d: block_chunk_name(config.chain, d, first, last) for d in config.datasets}
    blocks_df, txs_df = chunk.frames(config.chain_id)
    receipts_df = chunk.receipts_frame() if config.receipts else None
    # checked before anything of the chunk is written: a node that answers receipts for other
    # transactions (or loses some) leaves no file behind, and the rerun fetches the chunk again
    if receipts_df is not None and not receipts_df["transaction_hash"].sort().equals(txs_df["transaction_hash"].sort()):
        raise ValueError(f"{day} blocks {first}..{last}: the node's receipts ({receipts_df.height}) do not match "
                         f"the blocks' transactions ({txs_df.height}); nothing of these blocks was written")
    parts["transactions"].write(txs_df, names["transactions"])
    if receipts_df is not None:
        parts["receipts"].write(receipts_df, names["receipts"])
    parts["blocks"].write(blocks_df, names["blocks"])  # the blocks file last: chunk done when it exists
    return blocks_df.height, txs_df.height


def _commit_day(report: DayReport, rng: DayBlocks, parts: dict[str, Partition], config: ChainJobConfig) -> None:
    """The day's manifests, once every chunk is in: a partition with a manifest is complete."""
    report.transactions = parts["transactions"].scan().select(pl.len()).collect().item()
    report.blocks = rng.n_blocks
    common = {"first_block": rng.first_block, "last_block": rng.last_block, "chain": config.chain,
              "chain_id": config.chain_id, "blocks": rng.n_blocks}
    parts["transactions"].commit({**common, "rows": report.transactions})
    if config.receipts:
        parts["receipts"].commit({**common, "rows": report.transactions})
    parts["blocks"].commit({**common, "rows": rng.n_blocks})


DAY_TABLE_COLUMNS = ("day", "status", "blocks", "transactions", "blocks_fetched", "transactions_fetched",
                     "requests", "credits", "retries", "blocks_per_s", "txs_per_s", "stopped_at_block", "error")


def publish_day_table(reports: list[dict], key: str = "ingest-chain-days") -> None:
    """Per-day summary (blocks, txs, requests, credits, speed) as a Prefect table artifact."""
    if FlowRunContext.get() is None:
        return
    rows = [{c: r.get(c) for c in DAY_TABLE_COLUMNS} for r in reports]
    create_table_artifact(rows, key=key, description="ingest-chain: per UTC day")


# The Prefect task: retries declared here, not hand-written around the call.
ingest_chain_day_task = task(
    ingest_chain_day, name="ingest-chain-day", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE
)
