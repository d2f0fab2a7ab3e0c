"""ChainRpc: batched Ethereum JSON-RPC over HTTP with our own pacing and retry layer.

Why not web3's built-in retry: it retries HTTP 402 (quota gone: pointless), ignores Retry-After,
drops the JSON error body and never retries batches. Here every request (a batch counts as one)
waits for the rate limiter; 429, 5xx, timeouts, truncated bodies and JSON-RPC -32005 ("limit
exceeded") are retried with exponential backoff (Retry-After honoured); 401/403 (bad key) and 402
(quota) stop at once with a one-line error. The API key is substituted into the URL only when a
request is sent and is scrubbed from every message this module produces.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import requests

RETRYABLE_RPC_CODES = {-32005, -32603}  # limit exceeded; internal error (often transient upstream)
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


class RpcError(RuntimeError):
    """A JSON-RPC call failed for good. The message is one line and holds no secret."""


class RpcAuthError(RpcError):
    pass


class RpcQuotaError(RpcError):
    pass


class RpcUnreachableError(RpcError):
    pass


class RateLimiter:
    """Token bucket: at most ``rate`` units per second, bursts up to ``burst`` units."""

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
                if self._tokens >= units:
                    self._tokens -= units
                    return waited
                need = (units - self._tokens) / self.rate
            time.sleep(need)
            waited += need


class ChainRpc(Protocol):
    """What the chain tasks need from a node."""

    def call(self, method: str, params: Sequence[Any]) -> Any: ...

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]: ...


class _Retry(Exception):
    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


class HttpJsonRpc:
    """Live ChainRpc over HTTP (requests); one session, one rate limiter."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        requests_per_second: float = 20.0,
        timeout_s: float = 30.0,
        max_retries: int = 6,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ):
        self._url_template = url
        self._api_key = api_key or None
        self.limiter = RateLimiter(requests_per_second)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._session = requests.Session()
        self._ids = itertools.count(1)
        self.stats = {"requests": 0, "calls": 0, "retries": 0, "waited_s": 0.0}

    @classmethod
    def from_settings(cls, rpc: Any) -> "HttpJsonRpc":
        return cls(
            url=rpc.url,
            api_key=rpc.api_key.get_secret_value() if rpc.api_key else None,
            requests_per_second=rpc.requests_per_second,
            timeout_s=rpc.timeout_s,
            max_retries=rpc.max_retries,
            backoff_initial_s=rpc.backoff_initial_s,
            backoff_max_s=rpc.backoff_max_s,
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

    # ------------------------------------------------------------------ calls
    def call(self, method: str, params: Sequence[Any]) -> Any:
        """One JSON-RPC call; retryable JSON-RPC errors are retried like HTTP ones."""
        for attempt in range(self.max_retries + 1):
            payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
            body = self._post(payload, what=method)
            err = body.get("error") if isinstance(body, dict) else None
            if err and err.get("code") in RETRYABLE_RPC_CODES and attempt < self.max_retries:
                self.stats["retries"] += 1
                self._sleep_backoff(attempt, None)
                continue
            self.stats["calls"] += 1
            return self._result(body, method)
        raise AssertionError("unreachable")

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Send ``calls`` as one JSON-RPC batch; results in the order of ``calls``.

        Items that fail with a retryable JSON-RPC error are sent again (only those).
        """
        if not calls:
            return []
        results: dict[int, Any] = {}
        pending = {i: c for i, c in enumerate(calls)}
        for attempt in range(self.max_retries + 1):
            ids = {next(self._ids): i for i in pending}
            payload = [
                {"jsonrpc": "2.0", "id": rid, "method": pending[i][0], "params": list(pending[i][1])}
                for rid, i in ids.items()
            ]
            body = self._post(payload, what=f"batch of {len(payload)} {calls[0][0]}")
            if not isinstance(body, list):
                # Some providers answer a whole batch with one error object (e.g. rate limit).
                err = body.get("error") if isinstance(body, dict) else None
                if not (err and err.get("code") in RETRYABLE_RPC_CODES):
                    self._result(body if isinstance(body, dict) else {}, "batch")  # raises on error
                    raise RpcError(f"{self.url}: a batch was answered with a single non-error object")
                retry_items = list(pending)
            else:
                retry_items = []
                by_id = {item.get("id"): item for item in body if isinstance(item, dict)}
                for rid, i in ids.items():
                    item = by_id.get(rid)
                    if item is None:
                        retry_items.append(i)
                        continue
                    err = item.get("error")
                    if err and err.get("code") in RETRYABLE_RPC_CODES:
                        retry_items.append(i)
                        continue
                    results[i] = self._result(item, pending[i][0])
            self.stats["calls"] += len(pending) - len(retry_items)
            pending = {i: calls[i] for i in retry_items}
            if not pending:
                return [results[i] for i in range(len(calls))]
            self.stats["retries"] += 1
            self._sleep_backoff(attempt, None)
        raise RpcError(f"{self.url}: {len(pending)} calls of a batch still failing after {self.max_retries} retries")

    # ------------------------------------------------------------------ transport
    def _result(self, body: dict[str, Any], method: str) -> Any:
        err = body.get("error")
        if err:
            code, message = err.get("code"), self.scrub(str(err.get("message", "")))[:200]
            if code == -32005 or "limit" in message.lower() and "exceed" in message.lower():
                raise RpcQuotaError(f"{self.url}: {method} refused, rate or credit limit exceeded ({code}: {message})")
            raise RpcError(f"{self.url}: {method} failed ({code}: {message})")
        return body.get("result")

    def _sleep_backoff(self, attempt: int, hint: float | None) -> None:
        wait = hint if hint is not None else self.backoff_initial_s * (2**attempt)
        time.sleep(min(self.backoff_max_s, max(0.0, wait)))

    def _post(self, payload: Any, what: str) -> Any:
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            self.stats["waited_s"] += self.limiter.acquire()
            self.stats["requests"] += 1
            try:
                return self._post_once(payload)
            except _Retry as r:
                last = r.reason
                if attempt == self.max_retries:
                    break
                self.stats["retries"] += 1
                self._sleep_backoff(attempt, r.wait_s)
        if last.startswith("cannot connect"):
            raise RpcUnreachableError(f"{self.url}: {last} ({what}, {self.max_retries} retries)")
        raise RpcError(f"{self.url}: {what} failed after {self.max_retries} retries: {last}")

    def _post_once(self, payload: Any) -> Any:
        try:
            resp = self._session.post(
                self._real_url(),
                data=json.dumps(payload),
                headers={"Content-Type": "application/json"},
                timeout=self.timeout_s,
            )
        except requests.Timeout:
            raise _Retry(f"timed out after {self.timeout_s:g}s") from None
        except requests.ConnectionError as exc:
            raise _Retry(f"cannot connect ({type(exc).__name__})") from None
        status = resp.status_code
        if status in (401, 403):
            raise RpcAuthError(f"{self.url}: the endpoint rejected the API key (HTTP {status}); check rpc.api_key")
        if status == 402:
            raise RpcQuotaError(f"{self.url}: quota exhausted (HTTP 402); wait for the daily reset or raise the plan")
        if status in RETRYABLE_HTTP:
            retry_after = resp.headers.get("Retry-After")
            wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
            raise _Retry(f"HTTP {status}: {self.scrub(resp.text[:120]).strip()}", wait)
        if status >= 400:
            raise RpcError(f"{self.url}: HTTP {status}: {self.scrub(resp.text[:200]).strip()}")
        try:
            body = resp.json()
        except ValueError:
            raise _Retry(f"unreadable or truncated body ({len(resp.content)} bytes)") from None
        return body

    def close(self) -> None:
        self._session.close()
