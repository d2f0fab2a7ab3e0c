"""What paces the chain client: token buckets, the adaptive batch size, the daily credit ledger,
the Prefect global concurrency limit that several workers on one key share, and the counts of
what was sent (in all, and per thread).

The transport (:mod:`tasks.clients.rpc`) asks :class:`CreditPacer` before every HTTP request (a
batch counts as one): it waits for a request token, for the batch's credits (each call inside a
batch is charged, by method, as Infura does), charges the day's ledger (which refuses before
anything is sent once the budget is spent) and, when configured, occupies credit-sized slots of
the shared Prefect limit. :func:`ensure_credit_limit` creates that limit (the setup command).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import rate_limit

from tasks.core.errors import RpcBudgetError, RpcError
from tasks.core.settings import RpcSettings
from tasks.core.storage import read_json, write_json


class RateLimiter:
    """Token bucket: ``rate`` units per second, bursts up to ``burst`` units.

    A request larger than the bucket (a batch costing more credits than one second's worth) is
    let through once the bucket is full and leaves it in debt, so the long-run rate still holds.
    """

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self._tokens = self.capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, units: float = 1.0) -> float:
        """Block until ``units`` are available; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                self._last = now
                need_now = min(units, self.capacity)
                if self._tokens >= need_now:
                    self._tokens -= units
                    return waited
                need = (need_now - self._tokens) / self.rate
            time.sleep(need)
            waited += need


class AdaptiveBatchSize:
    """Halve when batches keep needing retries, double back once ``grow_after`` batches went mostly well.

    Decided on the batches answered since the last change of size, not on the last one alone: with a
    steady background of faults (one batch in ten retried, say) a rule that halves on every fault and
    grows only after ``grow_after`` faultless batches in a row sinks to one block a batch and stays
    there (~7x the requests). A fault while more than ``SHRINK_ABOVE`` of the recent batches needed a
    retry halves; ``grow_after`` batches with at most ``GROW_AT_MOST`` of them retried double."""

    SHRINK_ABOVE = 0.25
    GROW_AT_MOST = 0.1

    def __init__(self, maximum: int, grow_after: int = 10):
        self.maximum = max(1, maximum)
        self.current = self.maximum
        self.grow_after = grow_after
        self._seen = 0  # batches answered at this size
        self._troubled = 0  # of which needed a retry
        self.shrinks = 0

    def _reset(self) -> None:
        self._seen = self._troubled = 0

    def troubled(self) -> None:
        self._seen += 1
        self._troubled += 1
        if self.current > 1 and self._troubled / self._seen > self.SHRINK_ABOVE:
            self.current = max(1, self.current // 2)
            self.shrinks += 1
            self._reset()

    def quiet(self) -> None:
        self._seen += 1
        if self._seen >= self.grow_after:
            if self.current < self.maximum and self._troubled <= self.GROW_AT_MOST * self._seen:
                self.current = min(self.maximum, self.current * 2)
            self._reset()

    def settle(self, troubled: bool) -> None:
        """A batch is answered: it needed a retry (``troubled``) or it did not."""
        if troubled:
            self.troubled()
        else:
            self.quiet()


class CreditLedger:
    """Credits spent per UTC day (the provider's quota resets at 00:00 UTC), kept in a JSON file."""

    def __init__(self, budget_per_day: int | None, path: Path | None = None, today=None):
        self.budget = budget_per_day
        self.path = path
        self._today = today or (lambda: datetime.now(UTC).date().isoformat())
        self._lock = threading.Lock()
        self._spent: dict[str, int] = {}
        if path and Path(path).is_file():
            try:
                self._spent = {k: int(v) for k, v in read_json(path).items()}
            except (ValueError, OSError, AttributeError):
                self._spent = {}  # unreadable: start counting again rather than refuse to run

    def spent_today(self) -> int:
        return self._spent.get(self._today(), 0)

    def charge(self, credits: int) -> None:
        with self._lock:
            day = self._today()
            spent = self._spent.get(day, 0)
            if self.budget is not None and spent + credits > self.budget:
                raise RpcBudgetError(
                    f"daily credit budget spent ({spent:,} of {self.budget:,} credits on {day} UTC; "
                    f"the next request costs {credits:,}); the next run resumes here"
                )
            self._spent = {day: spent + credits}  # only today's count matters
            if self.path:
                write_json(Path(self.path), self._spent)


class CreditPacer:
    """What a request costs in credits, and the wait before it may be sent: a request bucket, a
    credit bucket (when ``credits_per_second`` is set), the daily ledger, the shared Prefect limit."""

    def __init__(self, requests_per_second: float, *, method_credits: Mapping[str, int] | None = None,
                 default_method_credits: int = 80, credits_per_second: float | None = None,
                 ledger: CreditLedger | None = None, concurrency_limit: str | None = None):
        self.limiter = RateLimiter(requests_per_second)
        self.credit_limiter = RateLimiter(credits_per_second) if credits_per_second else None
        self.credits_per_second = credits_per_second
        self.method_credits = dict(method_credits or {})
        self.default_method_credits = default_method_credits
        self.ledger = ledger
        self.concurrency_limit = concurrency_limit

    def credits_of(self, method: str) -> int:
        return self.method_credits.get(method, self.default_method_credits)

    def calls_per_second(self, method: str) -> int | None:
        """Calls of ``method`` within one second's credits (None: no credit pacing)."""
        if not self.credits_per_second:
            return None
        return max(1, int(self.credits_per_second // max(1, self.credits_of(method))))

    def wait(self, credits: int, scrub: Callable[[str], str]) -> float:
        """Block until a request costing ``credits`` may be sent; return the seconds waited.
        Raises RpcBudgetError (the day's budget) or RpcError (the shared limit is missing) before
        anything is sent; ``scrub`` keeps the key out of that message."""
        waited = self.limiter.acquire()
        if self.credit_limiter is not None:
            waited += self.credit_limiter.acquire(credits)
        if self.ledger is not None:
            self.ledger.charge(credits)  # raises RpcBudgetError before anything is sent
        if self.concurrency_limit:
            waited += occupy_credit_slots(self.concurrency_limit, credits, scrub)
        return waited


class SentCounts:
    """Requests, calls, credits, retries and seconds waited: in all (``stats``) and per thread."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {"requests": 0, "calls": 0, "retries": 0, "credits": 0, "waited_s": 0.0}
        self._lock = threading.Lock()
        self._local = threading.local()

    def count(self, key: str, n: float) -> None:
        with self._lock:
            self.stats[key] += n
        mine = getattr(self._local, "tally", None)
        if mine is not None:
            mine[key] = mine.get(key, 0) + n

    def adopt(self, sent: Mapping[str, float]) -> None:
        """Count what another thread sent on this thread's behalf (a prefetched batch) in this
        thread's tally; the global ``stats`` already have it."""
        mine = getattr(self._local, "tally", None)
        if mine is not None:
            for k, v in sent.items():
                mine[k] = mine.get(k, 0) + v

    @contextmanager
    def tally(self, merge: bool = True) -> Iterator[dict[str, float]]:
        """What this thread sends inside the block (requests, calls, credits, retries...): with
        batches in flight on several threads, the global ``stats`` cannot say whose they were.
        Nested, the inner tally is added to the outer one on exit unless ``merge`` is False (the
        caller hands it on with ``adopt``)."""
        outer = getattr(self._local, "tally", None)
        mine: dict[str, float] = {}
        self._local.tally = mine
        try:
            yield mine
        finally:
            self._local.tally = outer
            if outer is not None and merge:
                for k, v in mine.items():
                    outer[k] = outer.get(k, 0) + v


def occupy_credit_slots(name: str, credits: int, scrub: Callable[[str], str]) -> float:
    """Occupy ``credits`` slots of the Prefect global concurrency limit ``name`` (they decay at its
    credits per second); return the seconds waited. A one-line RpcError whatever Prefect raises."""
    t0 = time.monotonic()
    try:
        rate_limit(name, occupy=max(1, int(credits)), strict=True)
    except Exception as exc:  # a one-line error whatever Prefect raises
        first = scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:160]
        raise RpcError(f"Prefect concurrency limit {name!r} unavailable ({first}); create it with the setup command") from None
    return time.monotonic() - t0


def ensure_credit_limit(name: str, credits_per_second: float, burst_credits: int | None = None) -> dict[str, Any]:
    """Create (or update) the Prefect global concurrency limit that paces credits across workers.

    Slots are credits: the limit is the burst (one second's worth by default) and slots decay at
    ``credits_per_second``, so ``rate_limit(name, occupy=batch_credits)`` paces every worker that
    shares the key. On a sqlite-backed Prefect server acquisitions are slow under contention:
    use PostgreSQL for multi-worker setups.
    """
    limit = int(max(burst_credits or 0, credits_per_second))
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit, slot_decay_per_second=float(credits_per_second))
        got = client.read_global_concurrency_limit_by_name(name)
    return {"name": got.name, "limit": got.limit, "slot_decay_per_second": got.slot_decay_per_second}


def ensure_credit_limit_from_settings(rpc: RpcSettings) -> dict[str, Any] | None:
    """The setup command's entry point: create the limit named by rpc.concurrency_limit, if any."""
    if not rpc.concurrency_limit:
        return None
    per_call = max([rpc.default_method_credits, *rpc.method_credits.values()])
    return ensure_credit_limit(rpc.concurrency_limit, rpc.credits_per_second, burst_credits=per_call)
