"""PacedJsonGet: HTTP GET returning JSON, paced by a token bucket, retried with backoff.

Shared by the REST price and social sources (CoinGecko, Binance, X API, GDELT). The pacing
mechanism is the chain client's :class:`tasks.clients.limits.RateLimiter` (imported, one bucket per
source, so each API keeps its own limit). 429 / 5xx / timeouts / connection resets / bodies that
are not JSON are retried with exponential backoff, honouring ``Retry-After`` (seconds) and X's
``x-rate-limit-reset`` (epoch seconds, capped). Any other 4xx is returned to the caller, who knows
what a bad symbol or a bad key looks like on its API. Secrets (sent as headers or params) are
scrubbed from every message this module produces.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from prefect.concurrency.sync import rate_limit

from tasks.clients.limits import RateLimiter
from tasks.clients.rpc_wire import RETRYABLE_HTTP
from tasks.core.errors import HttpGiveUp

RETRYABLE_STATUS = RETRYABLE_HTTP | {418}  # Binance answers 418 once an IP ignored its 429s


@dataclass
class HttpAnswer:
    status: int
    body: Any  # parsed JSON, or the raw text when the body was not JSON (non-2xx only)
    headers: Mapping[str, str]


class PacedJsonGet:
    def __init__(self, name: str, base_url: str, *, requests_per_second: float, timeout_s: float,
                 max_retries: int, backoff_initial_s: float, backoff_max_s: float,
                 headers: Mapping[str, str] | None = None, secrets: tuple[str, ...] = (),
                 sleep: Callable[[float], None] = time.sleep, concurrency_limit: str | None = None):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.limiter = RateLimiter(requests_per_second)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._secrets = tuple(s for s in secrets if s)
        self._session = requests.Session()
        self._session.headers.update({"Accept": "application/json", **(headers or {})})
        self._sleep = sleep
        self.stats = {"requests": 0, "retries": 0, "waited_s": 0.0}
        # When workers on several hosts share one key: a Prefect global concurrency limit (one slot
        # per request, decaying at the source's rate) created by `chainsignal setup`.
        self.concurrency_limit = concurrency_limit

    def _shared_slot(self) -> None:
        if not self.concurrency_limit:
            return
        try:
            rate_limit(self.concurrency_limit, occupy=1, strict=True)
        except Exception as exc:  # one line whatever Prefect raises
            first = self.scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:160]
            raise HttpGiveUp(f"{self.name}: Prefect concurrency limit {self.concurrency_limit!r} unavailable ({first}); "
                             "create it with `chainsignal setup`") from None

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _backoff(self, attempt: int, headers: Mapping[str, str] | None) -> float:
        wait = min(self.backoff_max_s, self.backoff_initial_s * (2 ** attempt))
        if headers:
            try:
                if "Retry-After" in headers:
                    wait = min(self.backoff_max_s, float(headers["Retry-After"]))
                elif "x-rate-limit-reset" in headers:  # X API: epoch seconds when the window reopens
                    wait = min(self.backoff_max_s, max(0.0, float(headers["x-rate-limit-reset"]) - time.time()))
            except ValueError:
                pass
        return wait

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> HttpAnswer:
        """GET ``base_url + path``. 2xx with JSON, or a non-retryable status, is returned."""
        url = self.base_url + path
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
            self.stats["waited_s"] += self.limiter.acquire()
            self._shared_slot()
            self.stats["requests"] += 1
            headers: Mapping[str, str] | None = None
            try:
                resp = self._session.get(url, params=params, timeout=self.timeout_s)
            except requests.Timeout:
                last = f"timed out after {self.timeout_s}s"
            except requests.ConnectionError as exc:
                last = f"cannot connect ({type(exc).__name__})"
            else:
                headers = resp.headers
                if resp.status_code in RETRYABLE_STATUS:
                    last = f"HTTP {resp.status_code}"
                else:
                    try:
                        body = resp.json()
                    except (ValueError, json.JSONDecodeError):
                        if resp.ok:  # a 200 with a truncated or non-JSON body: transient or an API error text
                            last = f"HTTP 200 with a body that is not JSON: {self.scrub(resp.text[:80])!r}"
                            if attempt < self.max_retries:
                                self._sleep(self._backoff(attempt, None))
                                continue
                            raise HttpGiveUp(f"{self.name}: {url}: {last}") from None
                        body = resp.text
                    return HttpAnswer(resp.status_code, body, resp.headers)
            if attempt < self.max_retries:
                self._sleep(self._backoff(attempt, headers))
        raise HttpGiveUp(self.scrub(f"{self.name}: {url}: gave up after {self.max_retries + 1} attempts ({last})"))
