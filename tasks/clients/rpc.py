"""ChainRpc: batched Ethereum JSON-RPC over HTTP with our own pacing, credit and retry layer.

Why not web3's built-in retry: it retries HTTP 402 (quota gone: pointless), ignores Retry-After,
drops the JSON error body and never retries batches. Here:

- every HTTP request (a batch counts as one) waits for a request token bucket, and for a *credit*
  bucket charged with the batch's credit cost (each call inside a batch is charged, by method, as
  Infura does), optionally also for credit-sized slots of a Prefect global concurrency limit
  shared by several workers on one key (the buckets, the ledger and that limit: :mod:`tasks.clients.limits`);
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
import random
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import certifi
import urllib3

from tasks.clients.limits import AdaptiveBatchSize, CreditLedger, CreditPacer, SentCounts
from tasks.clients.rpc_wire import (
    LIMIT_RPC_CODES,
    RETRYABLE_HTTP,
    backoff_hint,
    columns_or_json,
    dumps,
    loads,
    retry_wait,
    retryable,
)
from tasks.core.errors import RpcAuthError, RpcError, RpcQuotaError, RpcUnreachableError
from tasks.core.settings import RpcSettings

_JSON_HEADERS = {"Content-Type": "application/json"}

Calls = Sequence[tuple[str, Sequence[Any]]]  # (method, params) of each call of a batch


class ChainRpc(Protocol):
    """What the chain tasks need from a node: every member a caller uses is declared here, and
    every client implements them all (callers never probe with ``hasattr``)."""

    stats: dict[str, Any]  # requests, calls, credits, retries, waited_s: everything the client sent
    columnar: bool  # whether batch(columns=...) may answer a polars frame

    @property
    def url(self) -> str: ...  # the endpoint as it may be shown (no key in it)

    def call(self, method: str, params: Sequence[Any]) -> Any: ...

    # results in the order of ``calls``: a list, or with ``columns`` a polars frame when every item came back clean
    def batch(self, calls: Calls, retry_null: bool = False, columns: Mapping[str, Any] | None = None) -> Any: ...

    def batch_size(self, method: str, wanted: int) -> int: ...  # calls of ``method`` for the next batch, <= wanted

    # what this thread sends inside the block (requests, credits, retries...)
    def tally(self, merge: bool = True) -> AbstractContextManager[dict[str, float]]: ...

    # count ``sent`` (batches another thread sent on this one's behalf) in this thread's tally
    def adopt(self, sent: Mapping[str, float]) -> None: ...


class _Retry(Exception):
    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


def _text(resp: urllib3.BaseHTTPResponse) -> str:
    return resp.data.decode("utf-8", errors="replace")


class HttpJsonRpc(ChainRpc):
    """Live ChainRpc over HTTP (urllib3); one connection pool, one request bucket, one credit bucket."""

    columnar = True  # batch(columns=...) is understood

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
        self.pacer = CreditPacer(requests_per_second, method_credits=method_credits,
                                 default_method_credits=default_method_credits, credits_per_second=credits_per_second,
                                 ledger=ledger, concurrency_limit=concurrency_limit)
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
        # After an HTTP 402 nothing more is sent until the provider's reset (00:00 UTC): batches
        # queued by other threads fail here, locally, instead of knocking again.
        self._quota_gone: tuple[str, str] | None = None  # (UTC day of the 402, its message)
        self._sent = SentCounts()
        self.stats: dict[str, Any] = self._sent.stats  # requests, calls, retries, credits, waited_s

    @classmethod
    def from_settings(cls, rpc: RpcSettings, ledger_path: Path | None = None) -> HttpJsonRpc:
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
    @property
    def ledger(self) -> CreditLedger | None:
        """The daily credit ledger (None: no budget kept)."""
        return self.pacer.ledger

    def credits_of(self, method: str) -> int:
        return self.pacer.credits_of(method)

    def batch_size(self, method: str, wanted: int) -> int:
        """Calls of ``method`` to put in the next batch: adaptive, and within one second's credits."""
        size = min(wanted, self.sizer.current)
        per_second = self.pacer.calls_per_second(method)
        if per_second is not None:
            size = min(size, per_second)
        return max(1, size)

    # What was sent, in all and per thread (batches are in flight on several): SentCounts.
    def _count(self, key: str, n: float) -> None:
        self._sent.count(key, n)

    def adopt(self, sent: Mapping[str, float]) -> None:
        self._sent.adopt(sent)

    def tally(self, merge: bool = True) -> AbstractContextManager[dict[str, float]]:
        return self._sent.tally(merge)

    # ------------------------------------------------------------------ calls
    def call(self, method: str, params: Sequence[Any]) -> Any:
        """One JSON-RPC call; retryable JSON-RPC errors are retried like HTTP ones."""
        for attempt in range(self.max_retries + 1):
            payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
            body = self._post(payload, what=method, credits=self.credits_of(method))
            err = body.get("error") if isinstance(body, dict) else None
            if err and retryable(err) and attempt < self.max_retries:
                self._count("retries", 1)
                self._sleep_backoff(attempt, backoff_hint(err))
                continue
            self._count("calls", 1)
            return self._result(body if isinstance(body, dict) else {}, method)
        raise AssertionError("unreachable")

    def batch(self, calls: Calls, retry_null: bool = False, columns: Mapping[str, Any] | None = None) -> Any:
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
            decode = columns_or_json(columns, list(ids)) if columns is not None and attempt == 0 else None
            body = self._post(payload, what=f"batch of {len(payload)} {calls[0][0]}", credits=credits, decode=decode)
            troubled = troubled or self.stats["retries"] > before
            if decode is not None and not isinstance(body, (list, dict)):  # the clean columnar answer
                self._count("calls", len(pending))
                self.sizer.settle(troubled)
                return body
            retry_items, hint, reason = self._sort_answer(body, ids, pending, results, retry_null)
            last_reason = reason or last_reason
            self._count("calls", len(pending) - len(retry_items))
            pending = {i: calls[i] for i in retry_items}
            if not pending:
                self.sizer.settle(troubled)
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

    def _sort_answer(self, body: Any, ids: dict[int, int], pending: dict[int, tuple[str, Sequence[Any]]],
                     results: dict[int, Any], retry_null: bool) -> tuple[list[int], float | None, str]:
        """A batch's answer sorted out: good results go into ``results`` (by call index); returns the
        call indices to send again, the provider's backoff hint and the last reason to retry."""
        if not isinstance(body, list):
            # Some providers answer a whole batch with one error object (e.g. rate limit).
            err = body.get("error") if isinstance(body, dict) else None
            if not (err and retryable(err)):
                self._result(body if isinstance(body, dict) else {}, "batch")  # raises on error
                raise RpcError(f"{self.url}: a batch was answered with a single non-error object")
            return list(pending), backoff_hint(err), f"JSON-RPC {err.get('code')} for the whole batch"
        retry_items: list[int] = []
        hint = None
        reason = ""
        by_id = {item.get("id"): item for item in body if isinstance(item, dict)}
        for rid, i in ids.items():
            item = by_id.get(rid)
            if item is None:
                retry_items.append(i)
                reason = "an item missing from the answer"
                continue
            err = item.get("error")
            if err and retryable(err):
                retry_items.append(i)
                hint = max(hint or 0.0, backoff_hint(err) or 0.0) or hint
                reason = f"JSON-RPC {err.get('code')}"
                continue
            result = self._result(item, pending[i][0])
            if result is None and retry_null:
                retry_items.append(i)
                reason = f"null result for {pending[i][0]}({', '.join(map(str, pending[i][1]))})"
                continue
            results[i] = result
        return retry_items, hint, reason

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
        self._count("waited_s", self.pacer.wait(credits, self.scrub))

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
            resp = self._http.request("POST", self._real_url(), body=dumps(payload), headers=_JSON_HEADERS,
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
            raise _Retry(f"HTTP {status}: {self._short(_text(resp))}", retry_wait(resp.headers, resp.data))
        if status >= 400:
            raise RpcError(f"{self.url}: HTTP {status}: {self._short(_text(resp))}")
        try:
            body = (decode or loads)(resp.data)
        except ValueError:  # orjson.JSONDecodeError is a ValueError too
            raise _Retry(f"unreadable or truncated body ({len(resp.data)} bytes)") from None
        return body

    def _short(self, text: str) -> str:
        return " ".join(self.scrub(text[:160]).split())


    def close(self) -> None:
        self._http.clear()
