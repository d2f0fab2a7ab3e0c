"""A UTC day -> its block range, by search on block timestamps (cached in the lake)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from tasks.clients.rpc import ChainRpc
from tasks.core.errors import NotFoundError
from tasks.core.storage import LakeMeta


@dataclass(frozen=True)
class DayBlocks:
    day: date
    first_block: int  # first block with timestamp >= 00:00 UTC of day
    last_block: int  # last block with timestamp < 00:00 UTC of the next day; < first when none

    @property
    def n_blocks(self) -> int:
        return max(0, self.last_block - self.first_block + 1)


def day_start_ts(day: date) -> int:
    return int(datetime.combine(day, time(0), tzinfo=UTC).timestamp())


class BlockClock:
    """Block timestamps from a node, memoised; finds the block range of a UTC day. Thread-safe: a
    stream's planner thread and the day's own task may ask for the same day; one searches, the
    other reads the answer."""

    def __init__(self, rpc: ChainRpc, cache: LakeMeta | None = None):
        self.rpc = rpc
        self._lock = threading.RLock()
        self._ts: dict[int, int] = {}
        self.cache = cache  # the lake's document of day ranges (Workspace.block_ranges_cache)
        self._ranges: dict[str, list[int]] = self._stored()

    def _stored(self) -> dict[str, list[int]]:
        got = self.cache.load() if self.cache is not None else None
        return got if isinstance(got, dict) else {}  # a corrupt cache is only a cache

    def latest(self) -> tuple[int, int]:
        block = self.rpc.call("eth_getBlockByNumber", ["latest", False])
        number, ts = int(block["number"], 16), int(block["timestamp"], 16)
        self._ts[number] = ts
        return number, ts

    def timestamp(self, number: int) -> int:
        if number not in self._ts:
            block = self.rpc.call("eth_getBlockByNumber", [hex(number), False])
            if block is None:
                raise NotFoundError(f"block {number} not found on the node")
            self._ts[number] = int(block["timestamp"], 16)
        return self._ts[number]

    def first_block_at_or_after(self, ts: int, hi: int, lo: int = 0) -> int:
        """Smallest block number in [lo, hi+1] whose timestamp >= ts (hi+1 when none is).

        Interpolation search (block times are nearly regular, so a guess from the timestamps of
        the bracket's ends lands within a few blocks) alternating with bisection, which bounds the
        probes at ~2 log2(range) in the worst case. Every probe is a paid call: on mainnet this
        takes ~4 probes a day where plain bisection takes ~25.
        """
        top = hi + 1  # the answer is in [lo, top]
        step = 0
        while lo < top:
            t_lo = self.timestamp(lo)
            if t_lo >= ts:
                return lo
            if top - lo == 1:
                return top
            known_top = top <= hi and top in self._ts
            if step % 2 == 0 and (known_top or top - 1 in self._ts or top - 1 == hi):
                # interpolate between lo and the highest block whose timestamp we know in the bracket
                ref = top if known_top else top - 1
                t_ref = self.timestamp(ref)
                if t_ref > t_lo:
                    guess = lo + int((ts - t_lo) * (ref - lo) / (t_ref - t_lo))
                    mid = min(top - 1, max(lo + 1, guess))
                else:
                    mid = (lo + top) // 2
            else:
                mid = (lo + top) // 2
            step += 1
            if self.timestamp(mid) >= ts:
                top = mid
            else:
                lo = mid
        return lo

    def day_range(self, day: date, latest_number: int, latest_ts: int, finality_blocks: int) -> DayBlocks | None:
        """The day's blocks, or None when the day is not over (or not final) on this node."""
        with self._lock:
            return self._day_range(day, latest_number, latest_ts, finality_blocks)

    def _day_range(self, day: date, latest_number: int, latest_ts: int, finality_blocks: int) -> DayBlocks | None:
        key = day.isoformat()
        if key in self._ranges:
            first, last = self._ranges[key]
            return DayBlocks(day, first, last)
        end_ts = day_start_ts(day + timedelta(days=1))
        if latest_ts < end_ts:
            return None
        prev = self._ranges.get((day - timedelta(days=1)).isoformat())
        # Consecutive days share a boundary: the day starts right after the previous one ends.
        first = prev[1] + 1 if prev else self.first_block_at_or_after(day_start_ts(day), latest_number)
        last = self.first_block_at_or_after(end_ts, latest_number, lo=first) - 1
        if latest_number - last < finality_blocks:
            return None
        self._ranges[key] = [first, last]
        if self.cache is not None:  # merged with what other hosts stored meanwhile
            self._ranges = {**self._stored(), **self._ranges}
            self.cache.save(self._ranges)
        return DayBlocks(day, first, last)


def block_chunks(first: int, last: int, blocks_per_file: int) -> list[tuple[int, int]]:
    """Cut [first, last] into fixed chunks aligned to multiples of blocks_per_file."""
    chunks = []
    start = first
    while start <= last:
        end = min(last, (start // blocks_per_file + 1) * blocks_per_file - 1)
        chunks.append((start, end))
        start = end + 1
    return chunks
