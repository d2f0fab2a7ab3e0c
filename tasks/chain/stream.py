"""ChunkStream: block chunks fetched ahead from a ChainRpc, in plan order, with the node kept busy.

The day job (:mod:`tasks.chain.job`) takes each chunk's answers from it; ``fetch_blocks`` and
``fetch_block_receipts`` fetch one block range on their own.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import polars as pl

from tasks.chain.mappers import (
    BLOCKS_BATCH,
    RECEIPTS_BATCH,
    map_block_links,
    map_raw_blocks,
    map_raw_receipts,
    raw_blocks_from_batch,
    raw_blocks_from_dicts,
    raw_receipts_from_batch,
    raw_receipts_from_dicts,
)
from tasks.clients.rpc import ChainRpc

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

    @cached_property
    def _raw_blocks(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(raw blocks, raw transactions), read once for ``frames`` and ``links``."""
        raws = [raw_blocks_from_batch(p) if isinstance(p, pl.DataFrame) else raw_blocks_from_dicts(p)
                for p in _runs(self.blocks)]
        return pl.concat([b for b, _ in raws]), pl.concat([t for _, t in raws])

    def frames(self, chain_id: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(blocks, transactions) in the lake's schemas."""
        return map_raw_blocks(*self._raw_blocks, chain_id)

    def links(self) -> pl.DataFrame:
        """(block_number, block_hash, parent_hash) of the chunk's blocks, as the node sent them."""
        return map_block_links(self._raw_blocks[0])

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
        self.columnar = columnar and rpc.columnar
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
        with self.rpc.tally(merge=False) as cost:
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
                    size = self.rpc.batch_size(method, self.wanted)
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
        with self.rpc.tally() as sent:
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
        self.rpc.adopt(sent)  # the batches were sent for whoever takes the chunk
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
