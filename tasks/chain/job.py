"""The block-range job: one UTC day of blocks and transactions into the lake.

It takes its provider (a ChainRpc) and its sink (the Lake) as arguments; the flow only wires.
A day is cut into block chunks; each chunk is one file per dataset and one unit of retry. A
chunk whose files exist is skipped, so a killed run resumes where it stopped; the day's
manifests are written last.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import date

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.chain.blockrange import BlockClock, block_chunks
from tasks.chain.mappers import (
    BLOCKS_BATCH,
    RECEIPTS_BATCH,
    map_raw_blocks,
    map_raw_receipts,
    raw_blocks_from_batch,
    raw_blocks_from_dicts,
    raw_receipts_from_batch,
    raw_receipts_from_dicts,
)
from tasks.clients.rpc import ChainRpc, RpcQuotaError
from tasks.core.logs import get_logger
from tasks.core.progress import progress
from tasks.core.storage import Lake, block_chunk_name


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


def _tally(rpc: ChainRpc, merge: bool = True):
    return rpc.tally(merge) if hasattr(rpc, "tally") else nullcontext({})


BLOCKS, RECEIPTS = "eth_getBlockByNumber", "eth_getBlockReceipts"
_PARAMS = {BLOCKS: lambda b: [hex(b), True], RECEIPTS: lambda b: [hex(b)]}
_COLUMNS = {BLOCKS: BLOCKS_BATCH, RECEIPTS: RECEIPTS_BATCH}


@dataclass
class Chunk:
    """One chunk's answers: per batch either a polars frame (read straight from the JSON) or the
    list of results (dicts) where the client handled items one by one."""

    blocks: list  # of pl.DataFrame | list[dict]
    receipts: list
    sent: dict[str, float]  # requests, credits, retries... spent on this chunk's batches

    def block_dicts(self) -> list[dict]:
        return [b for piece in self.blocks for b in piece]

    def frames(self, chain_id: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(blocks, transactions) in the lake's schemas."""
        raws = [raw_blocks_from_batch(p) if isinstance(p, pl.DataFrame) else raw_blocks_from_dicts(p)
                for p in _runs(self.blocks)]
        return map_raw_blocks(pl.concat([b for b, _ in raws]), pl.concat([t for _, t in raws]), chain_id)

    def receipts_frame(self) -> pl.DataFrame:
        raws = [raw_receipts_from_batch(p) if isinstance(p, pl.DataFrame) else raw_receipts_from_dicts(p)
                for p in _runs(self.receipts)]
        return map_raw_receipts(pl.concat(raws))


def _runs(pieces: list) -> list:
    """The pieces in order, consecutive columnar ones joined into one frame: each polars pass over a
    frame has a fixed cost, which small batches would otherwise pay once each. Dict pieces (answers
    handled item by item) stay as they are."""
    out: list = []
    frames: list[pl.DataFrame] = []
    for p in pieces:
        if isinstance(p, pl.DataFrame):
            frames.append(p)
            continue
        if frames:
            out.append(pl.concat(frames, how="vertical_relaxed"))
            frames = []
        out.append(p)
    if frames:
        out.append(pl.concat(frames, how="vertical_relaxed"))
    return out


class ChunkStream:
    """Block chunks fetched ahead, in plan order, with the node kept busy between them.

    Every chunk of the plan is cut into batches (sized by the client: adaptive, credit-paced) and
    up to ``4 x in_flight`` batches are kept submitted at all times, across chunk (and day)
    boundaries: while the caller maps and writes chunk k, the batches of chunk k+1 are already at
    the node. Fetching chunk by chunk left the node idle during every map/write and every chunk's
    tail (measured against cryo: bench/results/chain_ingest.md). Memory stays bounded by the
    window, not by the plan.

    A lazy plan (``plan_days``: each day's block range is searched when the plan reaches the day)
    is read ahead by a planner thread, at most ``LOOKAHEAD`` chunks ahead. On the caller's thread,
    each search's calls waited behind the batches in flight and held up the mapping and writing
    in between (~9 calls a day, 10-15 ms each with a 16-core node busy: bench/results/chain_ingest.md).

    ``take(first, last)`` returns that chunk's blocks (and receipts) if it is the next one in the
    plan, else None. Any error closes the stream (``broken``): what was taken stays valid, the
    caller decides what to do with the rest (a quota stop stops; a retry fetches on its own).
    """

    LOOKAHEAD = 2  # chunks the planner thread may resolve beyond what the window has planned

    def __init__(self, rpc: ChainRpc, chunks: Iterable[tuple[int, int]], *, receipts: bool, blocks_per_batch: int,
                 in_flight: int = 1, methods: tuple[str, ...] | None = None, columnar: bool = True) -> None:
        self.rpc, self.wanted = rpc, blocks_per_batch
        self.columnar = columnar and getattr(rpc, "columnar", False)
        self.methods = methods or ((BLOCKS, RECEIPTS) if receipts else (BLOCKS,))
        self.depth = 4 * max(1, in_flight)
        self.broken = False
        self.chunks: list[tuple[int, int]] = []  # the plan so far: ``chunks`` may be lazy (plan_days)
        self._costs: list[dict] = []  # what resolving each chunk cost (a lazy plan's range search)
        self._source = iter(chunks)
        self._ended = False
        self._ahead: queue.Queue | None = None
        self._stopped = threading.Event()
        if not isinstance(chunks, (list, tuple)):  # lazy: resolve it on a thread of its own
            self._ahead = queue.Queue(maxsize=self.LOOKAHEAD)
            threading.Thread(target=self._read_ahead, name="chunk-planner", daemon=True).start()
        self._next = 0
        self._window: deque[tuple[int, str, Future, dict]] = deque()
        self._plans = self._plan()
        self._pool = ThreadPoolExecutor(max_workers=max(1, in_flight), thread_name_prefix="rpc")
        self._fill()

    def _resolve_next(self) -> tuple[tuple[int, int] | None, dict]:
        """The plan's next chunk (None at its end) and what resolving it cost (a range search)."""
        with _tally(self.rpc, merge=False) as cost:
            return next(self._source, None), cost

    def _read_ahead(self) -> None:
        """The planner thread: the plan's chunks, each with what resolving it cost, into ``_ahead``;
        an exception is handed over in their place, and ends the thread like the plan's end does."""
        while True:
            try:
                item: object = self._resolve_next()
            except BaseException as exc:  # re-raised on the caller's thread
                item = exc
            while not self._stopped.is_set():
                try:
                    self._ahead.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stopped.is_set() or not isinstance(item, tuple) or item[0] is None:
                return

    def _chunk(self, index: int) -> tuple[int, int] | None:
        while len(self.chunks) <= index:
            if self._ended:
                return None
            item = self._resolve_next() if self._ahead is None else self._ahead.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            nxt, cost = item
            if nxt is None:
                self._ended = True
                return None
            self.chunks.append(nxt)
            self._costs.append(cost)
        return self.chunks[index]

    def _plan(self) -> Iterator[tuple[int, str, range, dict]]:
        """The batches, in order, each with what planning it cost: the chunk's resolution goes with
        its first batch (so the day that takes the chunk is charged for its range search).

        Within a chunk the methods take turns, a batch of blocks, then a batch of receipts, and so on.
        The two load different sides: full blocks are the node's heavy work, while receipts cost the
        node little but are the larger answers for the client to read. Sent blocks first and then
        receipts, each half of a chunk loaded mostly one side. Taking turns was 1.035-1.097x faster
        (paired medians, 16 cores; bench/results/chain_ingest.md)."""
        index = 0
        while (chunk := self._chunk(index)) is not None:
            first, last = chunk
            planning = self._costs[index]
            cursors = dict.fromkeys(self.methods, first)  # the next block of each method
            while cursors:
                for method, n in list(cursors.items()):
                    size = self.rpc.batch_size(method, self.wanted) if hasattr(self.rpc, "batch_size") else self.wanted
                    numbers = range(n, min(last, n + size - 1) + 1)
                    yield index, method, numbers, planning
                    planning = {}
                    if numbers[-1] < last:
                        cursors[method] = numbers[-1] + 1
                    else:
                        del cursors[method]
            index += 1

    def _fetch(self, method: str, numbers: range) -> tuple[list, dict[str, float]]:
        # A null block (or receipts list) is retried: nodes behind a load balancer lag.
        calls = [(method, _PARAMS[method](b)) for b in numbers]
        with _tally(self.rpc) as sent:
            if self.columnar:
                return self.rpc.batch(calls, retry_null=True, columns=_COLUMNS[method]), sent
            return self.rpc.batch(calls, retry_null=True), sent

    def _fill(self) -> None:
        while not self.broken and len(self._window) < self.depth:
            plan = next(self._plans, None)
            if plan is None:
                return
            index, method, numbers, planning = plan
            self._window.append((index, method, self._pool.submit(self._fetch, method, numbers), planning))

    def upcoming(self, chunks: Sequence[tuple[int, int]]) -> bool:
        """Whether ``chunks`` are exactly the next chunks this stream will hand out."""
        return not self.broken and all(self._chunk(self._next + k) == c for k, c in enumerate(chunks))

    def take(self, first: int, last: int) -> Chunk | None:
        if self.broken or self._chunk(self._next) != (first, last):
            return None
        got: dict[str, list] = {m: [] for m in self.methods}
        sent: dict[str, float] = {}
        try:
            while self._window and self._window[0][0] == self._next:
                _, method, future, planning = self._window.popleft()
                piece, tally = future.result()
                got[method].append(piece)
                for k, v in [*tally.items(), *planning.items()]:
                    sent[k] = sent.get(k, 0) + v
                self._fill()
        except BaseException:
            self.close()
            raise
        self._next += 1
        if hasattr(self.rpc, "adopt"):  # the batches were sent for whoever takes the chunk
            self.rpc.adopt(sent)
        return Chunk(got.get(BLOCKS, []), got.get(RECEIPTS, []), sent)

    def close(self) -> None:
        self.broken = True
        self._stopped.set()  # the planner thread stops at its next chunk (a search under way finishes)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fetch_blocks(rpc: ChainRpc, first: int, last: int, blocks_per_batch: int, in_flight: int = 1) -> list[dict]:
    """Full-transaction blocks first..last (eth_getBlockByNumber(n, true)), batched."""
    with ChunkStream(rpc, [(first, last)], receipts=False, blocks_per_batch=blocks_per_batch, in_flight=in_flight,
                     columnar=False) as s:
        return s.take(first, last).block_dicts()


def fetch_block_receipts(rpc: ChainRpc, first: int, last: int, blocks_per_batch: int,
                         in_flight: int = 1) -> list[list[dict]]:
    """Receipts of every transaction of blocks first..last (eth_getBlockReceipts), batched."""
    with ChunkStream(rpc, [(first, last)], receipts=True, blocks_per_batch=blocks_per_batch, in_flight=in_flight,
                     methods=(RECEIPTS,), columnar=False) as s:
        return [r for piece in s.take(first, last).receipts for r in piece]


def _datasets(receipts: bool) -> tuple[str, ...]:
    return ("transactions", "receipts", "blocks") if receipts else ("transactions", "blocks")


def _day_complete(lake: Lake, day: date, receipts: bool) -> bool:
    return all(lake.is_complete(d, day) for d in _datasets(receipts))


def _missing(parts: dict, chain: str, chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The chunks whose files are not all in the open partitions ``parts`` (dataset -> Partition)."""
    return [(a, b) for a, b in chunks if not all(p.has(block_chunk_name(chain, d, a, b)) for d, p in parts.items())]


def pending_chunks(lake: Lake, day: date, first: int, last: int, *, chain: str, blocks_per_file: int, receipts: bool,
                   overwrite: bool = False) -> list[tuple[int, int]]:
    """The chunks of a day's block range whose files are not all in the lake yet."""
    chunks = list(block_chunks(first, last, blocks_per_file))
    if overwrite:
        return chunks
    return _missing({d: lake.open_partition(d, day) for d in _datasets(receipts)}, chain, chunks)


def plan_days(lake: Lake, clock: BlockClock, days: Sequence[date], latest: tuple[int, int], *, chain: str,
              blocks_per_file: int, finality_blocks: int, receipts: bool, overwrite: bool = False) -> Iterator[tuple[int, int]]:
    """Every chunk still to fetch for ``days``, in order: the plan of one ChunkStream shared by the days.

    Lazy: a day's range is resolved only when the stream's window reaches it, so a run that stops
    early has asked nothing about the days after. Days already complete contribute nothing; the
    plan ends at a day not final yet or when the range search hits the quota (that day's own
    run then reports why)."""
    for day in days:
        if not overwrite and _day_complete(lake, day, receipts):
            continue
        try:
            rng = clock.day_range(day, latest[0], latest[1], finality_blocks)
        except RpcQuotaError:
            return
        if rng is None:
            return  # later days are not final either
        yield from pending_chunks(lake, day, rng.first_block, rng.last_block, chain=chain,
                                  blocks_per_file=blocks_per_file, receipts=receipts, overwrite=overwrite)


def stream_for_days(rpc: ChainRpc, lake: Lake, clock: BlockClock, days: Sequence[date], latest: tuple[int, int],
                    rpc_settings, overwrite: bool = False) -> ChunkStream:
    """One ChunkStream over every chunk still to fetch for ``days`` (see ``plan_days``), paced and
    sized by ``rpc_settings`` (the ``rpc`` settings section)."""
    plan = plan_days(lake, clock, days, latest, chain=rpc_settings.chain, blocks_per_file=rpc_settings.blocks_per_file,
                     finality_blocks=rpc_settings.finality_blocks, receipts=rpc_settings.receipts, overwrite=overwrite)
    return ChunkStream(rpc, plan, receipts=rpc_settings.receipts, blocks_per_batch=rpc_settings.blocks_per_batch,
                       in_flight=rpc_settings.max_concurrent_requests)


def ingest_chain_day(rpc: ChainRpc, *args, **kwargs) -> DayReport:
    """One UTC day into the lake (arguments: ``_ingest_chain_day``'s). Its report's requests,
    credits and retries are the ones spent on this day - its range search and its chunks' batches,
    whichever thread sent them - not whatever the shared client sent meanwhile."""
    with _tally(rpc) as sent:
        return _ingest_chain_day(rpc, *args, sent=sent, **kwargs)


def _ingest_chain_day(
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
    stream: ChunkStream | None = None,
    progress_file=None,
    sent: dict[str, float],
) -> DayReport:
    """One UTC day into the lake. ``stream``: a ChunkStream over several days' plan (``plan_days``),
    used when its next chunks are this day's, so the node stays busy across day boundaries;
    otherwise the day streams its own chunks."""
    log = get_logger()
    t0 = time.perf_counter()
    datasets = _datasets(receipts)
    if not overwrite and _day_complete(lake, day, receipts):
        m = lake.manifest("transactions", day) or {}
        return DayReport(day.isoformat(), "skipped", m.get("first_block"), m.get("last_block"),
                         m.get("blocks", 0), m.get("rows", 0))
    report = DayReport(day.isoformat(), "done")

    def spent(key: str) -> int:  # this day's range search + its chunks' batches (adopted by take)
        return int(sent.get(key, 0))

    def close(status: str) -> DayReport:
        report.status = status
        report.seconds = round(time.perf_counter() - t0, 3)
        for k in ("requests", "credits", "retries"):
            setattr(report, k, spent(k))
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
    chunks = list(block_chunks(rng.first_block, rng.last_block, blocks_per_file))
    todo = _missing(parts, chain, chunks)  # an overwrite's partitions are fresh: every chunk
    report.chunks_skipped = len(chunks) - len(todo)
    bar = progress(rng.n_blocks, str(day), "block", initial=rng.n_blocks - sum(b - a + 1 for a, b in todo),
                   file=progress_file)
    own = None
    if todo and (stream is None or not stream.upcoming(todo)):
        stream = own = ChunkStream(rpc, todo, receipts=receipts, blocks_per_batch=blocks_per_batch,
                                   in_flight=max_concurrent_requests)
    try:
        for first, last in todo:
            names = {d: block_chunk_name(chain, d, first, last) for d in datasets}
            try:
                chunk = stream.take(first, last)
                if chunk is None:
                    raise RuntimeError(f"{day}: the block stream is out of step at block {first}")
            except RpcQuotaError as err:
                # Nothing of this chunk is written; the finished chunks stay and the next run resumes.
                report.stopped_at_block, report.error = first, str(err)
                log.warning("%s stopped at block %d: %s", day, first, err)
                return close("stopped")
            blocks_df, txs_df = chunk.frames(chain_id)
            receipts_df = chunk.receipts_frame() if receipts else None
            # checked before anything of the chunk is written: a node that answers receipts for other
            # transactions (or loses some) leaves no file behind, and the rerun fetches the chunk again
            if receipts_df is not None and not receipts_df["transaction_hash"].sort().equals(txs_df["transaction_hash"].sort()):
                raise ValueError(f"{day} blocks {first}..{last}: the node's receipts ({receipts_df.height}) do not match "
                                 f"the blocks' transactions ({txs_df.height}); nothing of these blocks was written")
            parts["transactions"].write(txs_df, names["transactions"])
            if receipts_df is not None:
                parts["receipts"].write(receipts_df, names["receipts"])
            parts["blocks"].write(blocks_df, names["blocks"])  # the blocks file last: chunk done when it exists
            report.chunks_written += 1
            report.blocks_fetched += blocks_df.height
            report.transactions_fetched += txs_df.height
            elapsed = max(1e-9, time.perf_counter() - t0)
            bar.update(blocks_df.height)
            bar.set_postfix_str(f"{report.transactions_fetched / elapsed:,.0f} tx/s, {spent('credits'):,} credits", refresh=False)
            log.info("%s blocks %d..%d of %d..%d: %d txs | %.0f blocks/s, %.0f tx/s, %d credits so far",
                     day, first, last, rng.first_block, rng.last_block, txs_df.height,
                     report.blocks_fetched / elapsed, report.transactions_fetched / elapsed,
                     spent("credits"))
    finally:
        bar.close()
        if own is not None:
            own.close()
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
