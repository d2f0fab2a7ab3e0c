"""ChainRpc: batched Ethereum JSON-RPC over HTTP with our own pacing, credit and retry layer.

Why not web3's built-in retry: it retries HTTP 402 (quota gone: pointless), ignores Retry-After,
drops the JSON error body and never retries batches. Here:

- every HTTP request (a batch counts as one) waits for a request token bucket, and for a *credit*
  bucket charged with the batch's credit cost (each call inside a batch is charged, by method, as
  Infura does), optionally also for credit-sized slots of a Prefect global concurrency limit
  shared by several workers on one key;
- a daily credit budget (per UTC day, persisted) is checked before a request is sent: when it
  would be exceeded, :class:`RpcBudgetError` stops the caller cleanly, like HTTP 402 does;
- 429 (body -33200 / -32005 with ``backoff_seconds``, or ``Retry-After``), 5xx, timeouts,
  connection resets, truncated or malformed bodies, and JSON-RPC errors on some items of a batch
  (-32005, -32603, a load-balanced node's -32000 "header not found", ...) are retried (only the
  failed items) with exponential backoff and jitter, then fail with one line; errors that say the
  request itself is wrong (parse error, invalid request, method not found, invalid params) fail at
  once, since sending it again cannot help; a null block is retried the same way when the caller
  asks for it;
- 401/403 (bad key) and 402 (quota) stop at once with a one-line error, no retry;
- the batch size adapts: a batch that needed a retry halves the size of the next ones, and after
  ``grow_after_batches`` quiet batches it doubles back (like ethereum-etl's BatchWorkExecutor);
- the API key is substituted into the URL only when a request is sent and is scrubbed from every
  message this module produces.

The transport is urllib3 (what requests runs on), without requests' layer: on a 16-core host against
a local node, requests spent 2-3x urllib3's CPU per batch (0.26-0.90 against 0.09-0.31 CPU-s to fetch
the benchmark's 2,500 blocks and their receipts), and a client that pays less per request can send
smaller batches, which the node serves in parallel (bench/results/chain_ingest.md).
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import certifi
import urllib3

from tasks.core.errors import RpcAuthError, RpcBudgetError, RpcError, RpcQuotaError, RpcUnreachableError
from tasks.core.storage import read_json, write_json

try:  # a Prefect dependency, so present; parsing is the client's hot spot (2-3x json's speed)
    import orjson

    _loads, _dumps = orjson.loads, orjson.dumps
except ImportError:  # pragma: no cover
    _loads, _dumps = json.loads, lambda obj: json.dumps(obj).encode()

_JSON_HEADERS = {"Content-Type": "application/json"}


def _text(resp: urllib3.BaseHTTPResponse) -> str:
    return resp.data.decode("utf-8", errors="replace")


# JSON-RPC errors that say the request itself is wrong (parse error, invalid request, method not
# found, invalid params; 3 = execution reverted): not retried. Every other error code is (limits
# -32005/-33200, internal -32603, a lagging node's -32000, ...).
PERMANENT_RPC_CODES = {-32700, -32600, -32601, -32602, 3}
LIMIT_RPC_CODES = {-32005, -33200}  # rate or credit limit exceeded (two spellings)
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


def _retryable(error: Any) -> bool:
    return isinstance(error, dict) and error.get("code") not in PERMANENT_RPC_CODES


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
    """Halve on a retryable error, double back after ``grow_after`` quiet batches."""

    def __init__(self, maximum: int, grow_after: int = 10):
        self.maximum = max(1, maximum)
        self.current = self.maximum
        self.grow_after = grow_after
        self._quiet = 0
        self.shrinks = 0

    def troubled(self) -> None:
        self._quiet = 0
        if self.current > 1:
            self.current = max(1, self.current // 2)
            self.shrinks += 1

    def quiet(self) -> None:
        self._quiet += 1
        if self._quiet >= self.grow_after and self.current < self.maximum:
            self.current = min(self.maximum, self.current * 2)
            self._quiet = 0


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


class ChainRpc(Protocol):
    """What the chain tasks need from a node."""

    stats: dict[str, Any]

    def call(self, method: str, params: Sequence[Any]) -> Any: ...

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]], retry_null: bool = False) -> list[Any]: ...
    # (HttpJsonRpc also takes ``columns=``; ChunkStream asks for it only where ``columnar`` is True)

    def batch_size(self, method: str, wanted: int) -> int: ...

    def tally(self, merge: bool = True) -> AbstractContextManager[dict[str, float]]: ...


class _Retry(Exception):
    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


def _backoff_hint(error: Any) -> float | None:
    """Infura's -32005 carries data.backoff_seconds; honour it when present."""
    if isinstance(error, dict) and isinstance(error.get("data"), dict):
        value = error["data"].get("backoff_seconds")
        if isinstance(value, (int, float)) and value >= 0:
            return float(value)
    return None


def _columns_or_json(schema: Mapping[str, Any], ids: list[int]):
    """A decoder: the answer as a polars frame (rows in ``ids`` order) when every item is clean,
    else the JSON decoded as usual (a malformed body still raises ValueError: retried)."""

    def decode(content: bytes) -> Any:
        import io

        import polars as pl

        try:
            frame = pl.read_json(io.BytesIO(content), schema=schema)
        except Exception:  # whatever polars makes of it, the plain decoder decides
            frame = None
        if (frame is not None and frame.height == len(ids) and frame["error"].null_count() == frame.height
                and frame["result"].null_count() == 0):
            got = frame["id"].to_list()
            if got == ids:  # nodes answer a batch in order: nothing to sort
                return frame
            if sorted(got) == sorted(ids):  # JSON-RPC lets them answer in any order
                where = {rid: k for k, rid in enumerate(got)}
                return frame[[where[rid] for rid in ids]]
        return _loads(content)

    return decode


class HttpJsonRpc:
    """Live ChainRpc over HTTP (urllib3); one connection pool, one request bucket, one credit bucket."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        requests_per_second: float = 20.0,
        timeout_s: float = 30.0,
        max_retries: int = 6,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        *,
        method_credits: Mapping[str, int] | None = None,
        default_method_credits: int = 80,
        credits_per_second: float | None = None,
        ledger: CreditLedger | None = None,
        concurrency_limit: str | None = None,
        max_batch: int = 1000,
        grow_after_batches: int = 10,
        backoff_jitter: float = 0.5,
        connections: int = 10,
    ):
        self._url_template = url
        self._api_key = api_key or None
        self.limiter = RateLimiter(requests_per_second)
        self.credit_limiter = RateLimiter(credits_per_second) if credits_per_second else None
        self.credits_per_second = credits_per_second
        self.method_credits = dict(method_credits or {})
        self.default_method_credits = default_method_credits
        self.ledger = ledger
        self.concurrency_limit = concurrency_limit
        self.sizer = AdaptiveBatchSize(max_batch, grow_after_batches)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.backoff_jitter = backoff_jitter
        # A kept-alive connection per batch in flight (+ the caller's own calls); retries are ours
        # (below), never urllib3's; certifi's CA bundle, as requests used, so every image trusts the same.
        self._http = urllib3.PoolManager(num_pools=2, maxsize=max(10, connections + 2), retries=False,
                                         ca_certs=certifi.where())
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._ids = itertools.count(1)
        self._stats_lock = threading.Lock()
        self._local = threading.local()
        # After an HTTP 402 nothing more is sent until the provider's reset (00:00 UTC): batches
        # queued by other threads fail here, locally, instead of knocking again.
        self._quota_gone: tuple[str, str] | None = None  # (UTC day of the 402, its message)
        self.stats: dict[str, Any] = {"requests": 0, "calls": 0, "retries": 0, "credits": 0, "waited_s": 0.0}

    @classmethod
    def from_settings(cls, rpc: Any, ledger_path: Path | None = None) -> HttpJsonRpc:
        return cls(
            url=rpc.url,
            api_key=rpc.api_key.get_secret_value() if rpc.api_key else None,
            requests_per_second=rpc.requests_per_second,
            timeout_s=rpc.timeout_s,
            max_retries=rpc.max_retries,
            backoff_initial_s=rpc.backoff_initial_s,
            backoff_max_s=rpc.backoff_max_s,
            method_credits=rpc.method_credits,
            default_method_credits=rpc.default_method_credits,
            credits_per_second=rpc.credits_per_second,
            ledger=CreditLedger(rpc.daily_credit_budget, ledger_path),
            concurrency_limit=rpc.concurrency_limit,
            max_batch=rpc.blocks_per_batch,
            grow_after_batches=rpc.batch_grow_after_batches,
            backoff_jitter=rpc.backoff_jitter,
            connections=rpc.max_concurrent_requests,
        )

    # ------------------------------------------------------------------ secrets
    @property
    def url(self) -> str:
        """The endpoint as it may be shown: key replaced by ***."""
        return self._url_template.replace("{api_key}", "***")

    def _real_url(self) -> str:
        if "{api_key}" in self._url_template:
            if not self._api_key:
                raise RpcAuthError(f"{self.url}: the URL wants an API key but rpc.api_key is not set")
            return self._url_template.replace("{api_key}", self._api_key)
        return self._url_template

    def scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    # ------------------------------------------------------------------ credits
    def credits_of(self, method: str) -> int:
        return self.method_credits.get(method, self.default_method_credits)

    def batch_size(self, method: str, wanted: int) -> int:
        """Calls of ``method`` to put in the next batch: adaptive, and within one second's credits."""
        size = min(wanted, self.sizer.current)
        if self.credits_per_second:
            size = min(size, max(1, int(self.credits_per_second // max(1, self.credits_of(method)))))
        return max(1, size)

    def _count(self, key: str, n: float) -> None:
        with self._stats_lock:
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

    # ------------------------------------------------------------------ calls
    def call(self, method: str, params: Sequence[Any]) -> Any:
        """One JSON-RPC call; retryable JSON-RPC errors are retried like HTTP ones."""
        for attempt in range(self.max_retries + 1):
            payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
            body = self._post(payload, what=method, credits=self.credits_of(method))
            err = body.get("error") if isinstance(body, dict) else None
            if err and _retryable(err) and attempt < self.max_retries:
                self._count("retries", 1)
                self._sleep_backoff(attempt, _backoff_hint(err))
                continue
            self._count("calls", 1)
            return self._result(body if isinstance(body, dict) else {}, method)
        raise AssertionError("unreachable")

    columnar = True  # batch(columns=...) is understood

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]], retry_null: bool = False,
              columns: Mapping[str, Any] | None = None) -> Any:
        """Send ``calls`` as one JSON-RPC batch; results in the order of ``calls``.

        Items that fail with a retryable JSON-RPC error, go missing from the answer, or (with
        ``retry_null``) come back null are sent again - only those.

        ``columns`` (a polars schema of ``id``, ``error`` and ``result``): polars reads the answer
        straight into columns, only the fields named, with no Python object per field - about 4x
        less CPU than building dicts (bench/results/chain_ingest.md). If every item came back clean
        (no error, no null, every id), that frame is returned, rows in call order; otherwise the
        same answer is decoded as usual and handled item by item (a list of results).
        """
        if not calls:
            return []
        results: dict[int, Any] = {}
        pending = {i: c for i, c in enumerate(calls)}
        troubled = False
        last_reason = ""
        for attempt in range(self.max_retries + 1):
            ids = {next(self._ids): i for i in pending}
            payload = [
                {"jsonrpc": "2.0", "id": rid, "method": pending[i][0], "params": list(pending[i][1])}
                for rid, i in ids.items()
            ]
            credits = sum(self.credits_of(pending[i][0]) for i in pending)
            before = self.stats["retries"]
            decode = _columns_or_json(columns, list(ids)) if columns is not None and attempt == 0 else None
            body = self._post(payload, what=f"batch of {len(payload)} {calls[0][0]}", credits=credits, decode=decode)
            troubled = troubled or self.stats["retries"] > before
            if decode is not None and not isinstance(body, (list, dict)):  # the clean columnar answer
                self._count("calls", len(pending))
                if troubled:
                    self.sizer.troubled()
                else:
                    self.sizer.quiet()
                return body
            hint = None
            if not isinstance(body, list):
                # Some providers answer a whole batch with one error object (e.g. rate limit).
                err = body.get("error") if isinstance(body, dict) else None
                if not (err and _retryable(err)):
                    self._result(body if isinstance(body, dict) else {}, "batch")  # raises on error
                    raise RpcError(f"{self.url}: a batch was answered with a single non-error object")
                retry_items = list(pending)
                hint = _backoff_hint(err)
                last_reason = f"JSON-RPC {err.get('code')} for the whole batch"
            else:
                retry_items = []
                by_id = {item.get("id"): item for item in body if isinstance(item, dict)}
                for rid, i in ids.items():
                    item = by_id.get(rid)
                    if item is None:
                        retry_items.append(i)
                        last_reason = "an item missing from the answer"
                        continue
                    err = item.get("error")
                    if err and _retryable(err):
                        retry_items.append(i)
                        hint = max(hint or 0.0, _backoff_hint(err) or 0.0) or hint
                        last_reason = f"JSON-RPC {err.get('code')}"
                        continue
                    result = self._result(item, pending[i][0])
                    if result is None and retry_null:
                        retry_items.append(i)
                        last_reason = f"null result for {pending[i][0]}({', '.join(map(str, pending[i][1]))})"
                        continue
                    results[i] = result
            self._count("calls", len(pending) - len(retry_items))
            pending = {i: calls[i] for i in retry_items}
            if not pending:
                if troubled:
                    self.sizer.troubled()
                else:
                    self.sizer.quiet()
                return [results[i] for i in range(len(calls))]
            troubled = True
            if attempt == self.max_retries:
                break
            self._count("retries", 1)
            self._sleep_backoff(attempt, hint)
        self.sizer.troubled()
        raise RpcError(
            f"{self.url}: {len(pending)} of {len(calls)} calls of a batch still failing after "
            f"{self.max_retries} retries ({last_reason})"
        )

    # ------------------------------------------------------------------ transport
    def _result(self, body: dict[str, Any], method: str) -> Any:
        err = body.get("error")
        if err:
            code = err.get("code") if isinstance(err, dict) else None
            message = self.scrub(str(err.get("message", "") if isinstance(err, dict) else err))[:200]
            message = " ".join(message.split())
            if code in LIMIT_RPC_CODES:
                raise RpcError(f"{self.url}: {method} refused, rate or credit limit exceeded ({code}: {message})")
            raise RpcError(f"{self.url}: {method} failed ({code}: {message})")
        return body.get("result")

    def _sleep_backoff(self, attempt: int, hint: float | None) -> None:
        if hint is not None:  # the provider said how long: wait exactly that (capped)
            wait = hint
        else:
            wait = min(self.backoff_max_s, self.backoff_initial_s * (2**attempt))
            wait *= 1.0 - self.backoff_jitter * random.random()
        time.sleep(min(self.backoff_max_s, max(0.0, wait)))

    def _acquire(self, credits: int) -> None:
        gone = self._quota_gone
        if gone is not None and gone[0] == datetime.now(UTC).date().isoformat():
            raise RpcQuotaError(gone[1])
        waited = self.limiter.acquire()
        if self.credit_limiter is not None:
            waited += self.credit_limiter.acquire(credits)
        if self.ledger is not None:
            self.ledger.charge(credits)  # raises RpcBudgetError before anything is sent
        if self.concurrency_limit:
            t0 = time.monotonic()
            try:
                from prefect.concurrency.sync import rate_limit

                rate_limit(self.concurrency_limit, occupy=max(1, int(credits)), strict=True)
            except Exception as exc:  # a one-line error whatever Prefect raises
                first = self.scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:160]
                raise RpcError(
                    f"Prefect concurrency limit {self.concurrency_limit!r} unavailable ({first}); "
                    "create it with the setup command"
                ) from None
            waited += time.monotonic() - t0
        self._count("waited_s", waited)

    def _post(self, payload: Any, what: str, credits: int = 0, decode=None) -> Any:
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            self._acquire(credits)
            self._count("requests", 1)
            self._count("credits", credits)
            try:
                return self._post_once(payload, decode)
            except _Retry as r:
                last = r.reason
                if attempt == self.max_retries:
                    break
                self._count("retries", 1)
                self._sleep_backoff(attempt, r.wait_s)
        if last.startswith("cannot connect"):
            raise RpcUnreachableError(f"{self.url}: {last} ({what}, {self.max_retries} retries)")
        raise RpcError(f"{self.url}: {what} failed after {self.max_retries} retries: {last}")

    def _post_once(self, payload: Any, decode=None) -> Any:
        try:
            resp = self._http.request("POST", self._real_url(), body=_dumps(payload), headers=_JSON_HEADERS,
                                      timeout=self._timeout, retries=False)
        except urllib3.exceptions.NewConnectionError as exc:  # refused, unknown host (before TimeoutError: a subclass)
            raise _Retry(f"cannot connect ({type(exc).__name__})") from None
        except urllib3.exceptions.TimeoutError:
            raise _Retry(f"timed out after {self.timeout_s:g}s") from None
        except urllib3.exceptions.ProtocolError:  # reset, or closed before the whole body came
            raise _Retry("cannot connect (connection dropped)") from None
        except urllib3.exceptions.HTTPError as exc:  # anything else on the wire (TLS, proxy...)
            raise _Retry(f"cannot connect ({type(exc).__name__})") from None
        status = resp.status
        if status in (401, 403):
            raise RpcAuthError(f"{self.url}: the endpoint rejected the API key (HTTP {status}); check rpc.api_key")
        if status == 402:
            message = f"{self.url}: quota exhausted (HTTP 402); wait for the daily reset (00:00 UTC) or raise the plan"
            self._quota_gone = (datetime.now(UTC).date().isoformat(), message)
            raise RpcQuotaError(message)
        if status in RETRYABLE_HTTP:
            raise _Retry(f"HTTP {status}: {self._short(_text(resp))}", self._retry_wait(resp))
        if status >= 400:
            raise RpcError(f"{self.url}: HTTP {status}: {self._short(_text(resp))}")
        try:
            body = (decode or _loads)(resp.data)
        except ValueError:  # orjson.JSONDecodeError is a ValueError too
            raise _Retry(f"unreadable or truncated body ({len(resp.data)} bytes)") from None
        return body

    def _short(self, text: str) -> str:
        return " ".join(self.scrub(text[:160]).split())

    @staticmethod
    def _retry_wait(resp: urllib3.BaseHTTPResponse) -> float | None:
        """Retry-After (seconds) first, else the body's -33200/-32005 ``backoff_seconds``."""
        retry_after = (resp.headers.get("Retry-After") or "").strip()
        try:
            if retry_after:
                return max(0.0, float(retry_after))
        except ValueError:
            pass  # an HTTP date: fall back to the body or our own backoff
        try:
            body = _loads(resp.data)
        except ValueError:
            return None
        errors = body if isinstance(body, list) else [body]
        hints = [_backoff_hint(e.get("error")) for e in errors if isinstance(e, dict)]
        hints = [h for h in hints if h is not None]
        return max(hints) if hints else None

    def close(self) -> None:
        self._http.clear()


def ensure_credit_limit(name: str, credits_per_second: float, burst_credits: int | None = None) -> dict[str, Any]:
    """Create (or update) the Prefect global concurrency limit that paces credits across workers.

    Slots are credits: the limit is the burst (one second's worth by default) and slots decay at
    ``credits_per_second``, so ``rate_limit(name, occupy=batch_credits)`` paces every worker that
    shares the key. On a sqlite-backed Prefect server acquisitions are slow under contention:
    use PostgreSQL for multi-worker setups.
    """
    from prefect.client.orchestration import get_client

    limit = int(max(burst_credits or 0, credits_per_second))
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit, slot_decay_per_second=float(credits_per_second))
        got = client.read_global_concurrency_limit_by_name(name)
    return {"name": got.name, "limit": got.limit, "slot_decay_per_second": got.slot_decay_per_second}


def ensure_credit_limit_from_settings(rpc: Any) -> dict[str, Any] | None:
    """The setup command's entry point: create the limit named by rpc.concurrency_limit, if any."""
    if not rpc.concurrency_limit:
        return None
    per_call = max([rpc.default_method_credits, *rpc.method_credits.values()])
    return ensure_credit_limit(rpc.concurrency_limit, rpc.credits_per_second, burst_credits=per_call)
