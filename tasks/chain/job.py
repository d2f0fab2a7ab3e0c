"""The block-range job: one UTC day of blocks and transactions into the lake.

It takes its provider (a ChainRpc) and its sink (the Lake) as arguments; the flow only wires.
A day is cut into block chunks; each chunk is one file per dataset and one unit of retry. A
chunk whose files exist is skipped, so a killed run resumes where it stopped; the day's
manifests are written last. The chunks' blocks come from a :class:`~tasks.chain.stream.ChunkStream`.

Nothing wrong gets in (:mod:`tasks.chain.identity`, :mod:`tasks.chain.plan`): the lake's chain
is recorded on its first write and another chain is refused; a day follows one plan (range and
chunking, recorded before its first chunk) and commits exactly the plan's files; every chunk's
blocks must continue the hash chain of what the lake holds before them; on a resume, the chunks
already in the lake are checked against the node first (the hash of the last block of each run
of them), and a day whose stored blocks the node no longer has is discarded and fetched again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import IO, Any

import polars as pl
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from tasks.chain.blockrange import BlockClock, DayBlocks
from tasks.chain.identity import ChainIdentity, check_lake_chain, first_broken_link, record_lake_chain
from tasks.chain.plan import DayPlan, check_day_files, current_plan, discard_files, save_plan
from tasks.chain.stream import Chunk, ChunkStream
from tasks.clients.rpc import ChainRpc
from tasks.core.errors import ChainMismatchError, DiskFullError, RpcError, RpcQuotaError
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


def pending_chunks(lake: Lake, rng: DayBlocks, config: ChainJobConfig, node: ChainIdentity,
                   overwrite: bool = False) -> list[tuple[int, int]]:
    """The chunks of a day's plan whose files are not all in the lake yet (reads only)."""
    plan, _ = current_plan(lake, rng, config.chain, config.blocks_per_file, node, overwrite)
    if overwrite:
        return plan.chunks
    parts = {d: lake.open_partition(d, rng.day) for d in config.datasets}
    return [(a, b) for a, b in plan.chunks if not all(p.has(block_chunk_name(plan.chain, d, a, b)) for d, p in parts.items())]


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
        yield from pending_chunks(lake, rng, config, clock.identity(config.chain_id), overwrite)


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
    day streams its own chunks. A node that serves another chain than the lake holds is refused
    (:class:`ChainMismatchError`) before anything is written."""
    with rpc.tally() as sent:
        t0 = time.perf_counter()
        if not overwrite and _day_complete(lake, day, config):
            m = lake.manifest("transactions", day) or {}
            return DayReport(day.isoformat(), "skipped", m.get("first_block"), m.get("last_block"),
                             m.get("blocks", 0), m.get("rows", 0))
        run = _DayRun(day, config, DayReport(day.isoformat(), "done"), sent, t0)
        try:
            node = clock.identity(config.chain_id)
            check_lake_chain(lake, node, rpc.url)
            rng = clock.day_range(day, latest[0], latest[1], config.finality_blocks)
        except RpcQuotaError as err:
            return run.close("stopped", error=str(err))
        if rng is None:
            return run.close("not_final", error="day not over or not final on the node yet")
        run.report.first_block, run.report.last_block = rng.first_block, rng.last_block
        parts = {d: lake.open_partition(d, day, overwrite) for d in config.datasets}
        plan = _open_plan(lake, rpc, run, rng, parts, node, overwrite)
        try:
            todo, known = _resume_point(rpc, run, plan, parts)
        except RpcQuotaError as err:
            return run.close("stopped", error=str(err))
        run.report.chunks_skipped = len(plan.chunks) - len(todo)
        known.update(_previous_day_tip(lake, plan, todo))
        if not _fetch_and_write(rpc, run, rng, parts, todo, stream, progress_file, known):
            return run.close("stopped")
        _commit_day(run.report, plan, parts, config)
        return run.close("done")


def _open_plan(lake: Lake, rpc: ChainRpc, run: _DayRun, rng: DayBlocks, parts: dict[str, Partition],
               node: ChainIdentity, overwrite: bool) -> DayPlan:
    """The day's plan, recorded (with the lake's chain, on its first write) before any chunk is
    written; the files of the folder that the plan does not list are removed."""
    config = run.config
    plan, recorded = current_plan(lake, rng, config.chain, config.blocks_per_file, node, overwrite)
    record_lake_chain(lake, node, config.chain, rpc.url)
    if plan != recorded:
        save_plan(lake, plan, config.datasets)
    if recorded is not None and plan is recorded and plan.blocks_per_file != config.blocks_per_file:
        run.log.info("%s: finishing the day's recorded plan (%d blocks per file, rpc.blocks_per_file is %d now)",
                     run.day, plan.blocks_per_file, config.blocks_per_file)
    gone = discard_files(parts, plan)
    if gone:
        run.log.warning("%s: removed %d chunk files of another plan (%s); the day follows %d..%d, %d blocks per file",
                        run.day, gone, "another range or chain" if recorded is not None and not recorded.same_blocks(plan)
                        else "other chunking", plan.first_block, plan.last_block, plan.blocks_per_file)
        run.report.extra["files_discarded"] = gone
    return plan


def _resume_point(rpc: ChainRpc, run: _DayRun, plan: DayPlan, parts: dict[str, Partition]
                  ) -> tuple[list[tuple[int, int]], dict[int, str]]:
    """(the plan's chunks to fetch, {block: hash} of the lake's blocks right before them).

    The chunks already in the lake were checked when written (each continues the one before it),
    so they are the node's blocks if the last block of each run of them still is: one batch asks
    those hashes. A block the node no longer has (a reorg deeper than finality_blocks, or another
    chain with the same genesis) discards the whole day, which is then fetched again."""
    todo = _missing(parts, plan.chain, plan.chunks)
    stored = [c for c in plan.chunks if c not in todo]
    if not stored:
        return todo, {}
    starts = {a for a, _ in stored}
    ends = [b for _, b in stored if b + 1 not in starts]  # the last block of each run of stored chunks
    held = dict(parts["blocks"].scan([block_chunk_name(plan.chain, "blocks", a, b) for a, b in stored])
                .filter(pl.col("block_number").is_in(ends)).select("block_number", "block_hash").collect().iter_rows())
    answers = rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in ends], retry_null=True)
    for n, block in zip(ends, answers, strict=True):
        now = (block or {}).get("hash", "").lower()
        if held.get(n) != now:
            run.log.warning("%s: block %d in the lake (%s) is not the node's block %d (%s): a reorg deeper than "
                            "rpc.finality_blocks or another chain; the day's chunks are discarded and fetched again",
                            run.day, n, held.get(n), n, now or None)
            run.report.extra["chain_break_at_block"] = n
            discard_files(parts, None)
            return list(plan.chunks), {}
    return todo, held


def _previous_day_tip(lake: Lake, plan: DayPlan, todo: list[tuple[int, int]]) -> dict[int, str]:
    """{block: hash} of the previous day's last block as the lake holds it, when the day's first chunk
    is to be fetched (it must continue it); {} when the lake does not hold that day."""
    if not todo or todo[0][0] != plan.first_block or plan.first_block == 0:
        return {}
    before = plan.day - timedelta(days=1)
    if not lake.is_complete("blocks", before):
        return {}
    got = (lake.scan("blocks", before, before).filter(pl.col("block_number") == plan.first_block - 1)
           .select("block_hash").collect())
    return {plan.first_block - 1: got["block_hash"][0]} if got.height else {}


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
                     todo: list[tuple[int, int]], stream: ChunkStream | None, progress_file: IO[str] | None,
                     known: dict[int, str]) -> bool:
    """Every chunk of ``todo``, in order, fetched (from ``stream`` when its next chunks are these,
    else from a stream of the day's own), checked and written; False when the quota stopped the day.
    ``known``: {block: hash} of the lake's blocks right before chunks of ``todo``; each chunk written
    adds its last block, so every chunk is checked to continue the one before it."""
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
            _check_continues(chunk, run.day, first, last, known, first == rng.first_block)
            blocks, txs, known[last] = _write_chunk(chunk, parts, run.day, first, last, config)
            run.chunk_written(first, last, blocks, txs, rng, bar)
    finally:
        bar.close()
        if own is not None:
            own.close()
    return True


def _check_continues(chunk: Chunk, day: date, first: int, last: int, known: dict[int, str], day_start: bool) -> None:
    """The chunk's blocks are ``first..last``, each the parent of the next, the first continuing the
    block before it as the lake holds it. Across days a break is refused (the lake holds another
    fork from the previous day on: only an overwrite of that day repairs it); inside a day it is
    the node changing under the run, and the day's retry checks the stored chunks again."""
    broken = first_broken_link(chunk.links(), first, last, known.get(first - 1))
    if broken is None:
        return
    number, why = broken
    if day_start and number == first and first - 1 in known:
        before = day - timedelta(days=1)
        raise ChainMismatchError(
            f"{day}: {why}, {known[first - 1]}, as the lake holds it for {before}: the node follows another chain "
            f"than the lake from block {first - 1} on (a reorg deeper than rpc.finality_blocks, or another chain with "
            f"the same chain id); re-ingest from {before} with --overwrite, or point rpc.url at the lake's chain")
    raise RpcError(f"{day} blocks {first}..{last}: {why} (the node's chain changed during the run); nothing of "
                   "these blocks was written")


def _write_chunk(chunk: Chunk, parts: dict[str, Partition], day: date, first: int, last: int,
                 config: ChainJobConfig) -> tuple[int, int, str]:
    """One chunk mapped, checked and written, the blocks file last; (blocks, transactions, hash of
    its last block) written."""
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
    return blocks_df.height, txs_df.height, blocks_df["block_hash"][-1]


def _commit_day(report: DayReport, plan: DayPlan, parts: dict[str, Partition], config: ChainJobConfig) -> None:
    """The day's manifests, once every chunk is in: a partition with a manifest is complete. Each lists
    exactly the plan's files, once their blocks are checked to be the day's range, each once."""
    report.blocks, report.transactions = check_day_files(parts, plan)
    common = {"first_block": plan.first_block, "last_block": plan.last_block, "chain": config.chain,
              "chain_id": config.chain_id, "genesis_hash": plan.genesis_hash, "blocks": plan.n_blocks,
              "blocks_per_file": plan.blocks_per_file}
    parts["transactions"].commit({**common, "rows": report.transactions}, files=plan.files("transactions"))
    if config.receipts:
        parts["receipts"].commit({**common, "rows": report.transactions}, files=plan.files("receipts"))
    parts["blocks"].commit({**common, "rows": plan.n_blocks}, files=plan.files("blocks"))


DAY_TABLE_COLUMNS = ("day", "status", "blocks", "transactions", "blocks_fetched", "transactions_fetched",
                     "requests", "credits", "retries", "blocks_per_s", "txs_per_s", "stopped_at_block", "error")


def publish_day_table(reports: list[dict], key: str = "ingest-chain-days") -> None:
    """Per-day summary (blocks, txs, requests, credits, speed) as a Prefect table artifact."""
    if FlowRunContext.get() is None:
        return
    rows = [{c: r.get(c) for c in DAY_TABLE_COLUMNS} for r in reports]
    create_table_artifact(rows, key=key, description="ingest-chain: per UTC day")


# The Prefect task: retries declared here, not hand-written around the call.
def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Not a node that serves another chain than the lake (a retry asks the same node the same thing),
    nor a full disk (still full 5 or 30 s later: the user frees space and reruns)."""
    return not isinstance(state.result(raise_on_failure=False), ChainMismatchError | DiskFullError)


ingest_chain_day_task = task(
    ingest_chain_day, name="ingest-chain-day", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE,
    retry_condition_fn=_worth_retrying,
)
