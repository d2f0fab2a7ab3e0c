"""A real local HTTP server (stdlib, own thread, port 0) replaying REST API bodies from disk.

Each route maps a path prefix to a function ``(path, query, headers) -> (status, body, headers)``;
the helpers below answer like CoinGecko, Binance, X API v2 and GDELT DOC 2.0 from the files under
``tests/data/http/<source>/`` (synthetic bodies shaped from each API's documentation; see the
README there). Faults are queued and consumed one per request, before normal replay:
``"429"`` (with ``Retry-After``), ``"418"``, ``"500"``, ``"502"``, ``"503"``, ``"401"``,
``"malformed"`` (a 200 whose JSON body is cut in half), ``"timeout"`` (sleep past the client's
timeout, then answer normally). Every request is recorded (path, query, headers).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.replay import LocalServer

DATA = Path(__file__).parent / "data" / "http"
Answer = tuple[int, Any, dict[str, str]]
Route = Callable[[str, dict[str, str], dict[str, str]], Answer]


class HttpReplay(LocalServer):
    def __init__(self, routes: dict[str, Route], timeout_sleep_s: float = 1.0):
        self.routes = routes
        self.faults: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.timeout_sleep_s = timeout_sleep_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append({"path": parts.path, "query": query, "headers": headers, "at": time.monotonic()})
                fault = server.faults.pop(0) if server.faults else None
                if fault == "timeout":
                    time.sleep(server.timeout_sleep_s)
                    fault = None
                if fault and fault.isdigit():
                    extra = {"Retry-After": "0.01"} if fault == "429" else {}
                    return self._send(int(fault), {"error": f"injected {fault}"}, extra)
                route = next((r for prefix, r in server.routes.items() if parts.path.startswith(prefix)), None)
                if route is None:
                    return self._send(404, {"error": "no such route"}, {})
                status, body, extra = route(parts.path, query, headers)
                self._send(status, body, extra, truncate=fault == "malformed")

            def _send(self, status: int, body: Any, extra: dict[str, str], truncate: bool = False):
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                if truncate:
                    payload = payload[: len(payload) // 2]
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/plain")
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._listen(Handler)


def _load(source: str, name: str) -> Any:
    return json.loads((DATA / source / name).read_text())


# ----------------------------------------------------------------------------- API look-alikes
def binance_route(path: str, q: dict[str, str], h: dict[str, str]) -> Answer:
    """/api/v3/klines: filter by startTime/endTime, honour limit; unknown symbol -> 400 -1121."""
    f = DATA / "binance" / f"klines_{q.get('symbol', '')}_{q.get('interval', '')}.json"
    if not f.is_file():
        return 400, {"code": -1121, "msg": "Invalid symbol."}, {}
    lo, hi, limit = int(q["startTime"]), int(q["endTime"]), int(q.get("limit", 500))
    rows = [k for k in json.loads(f.read_text()) if lo <= k[0] <= hi]
    return 200, rows[:limit], {}


def coingecko_route(key: str | None = None) -> Route:
    """/coins/{id}/market_chart/range: points between from and to (seconds); a wrong key -> 401."""

    def route(path: str, q: dict[str, str], h: dict[str, str]) -> Answer:
        if key is not None and h.get("x-cg-demo-api-key") != key and h.get("x-cg-pro-api-key") != key:
            return 401, {"status": {"error_code": 10002, "error_message": "API Key Missing or invalid"}}, {}
        parts = path.split("/")
        coin = parts[parts.index("coins") + 1]
        f = DATA / "coingecko" / f"market_chart_range_{coin}.json"
        if not f.is_file():
            return 404, {"error": "coin not found"}, {}
        lo, hi = int(q["from"]) * 1000, int(q["to"]) * 1000
        body = json.loads(f.read_text())
        return 200, {k: [p for p in v if lo <= p[0] <= hi] for k, v in body.items()}, {}

    return route


def x_api_route(token: str) -> Route:
    """/2/tweets/search/recent: bearer check, two pages chained by next_token."""

    def route(path: str, q: dict[str, str], h: dict[str, str]) -> Answer:
        if h.get("authorization") != f"Bearer {token}":
            return 401, {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}, {}
        page = "search_recent_page2.json" if q.get("next_token") else "search_recent_page1.json"
        return 200, _load("x_api", page), {}

    return route


def gdelt_route(path: str, q: dict[str, str], h: dict[str, str]) -> Answer:
    """DOC 2.0 ArtList JSON; a too-short query answers 200 with a plain-text complaint, as GDELT does."""
    if len(q.get("query", "").strip('"#')) < 3:
        return 200, b"The specified phrase is too short.", {}
    return 200, _load("gdelt", "artlist_ethereum.json"), {}
