"""A real local HTTP server (stdlib, own thread, port 0) replaying recorded JSON-RPC responses.

Responses come from ``web3_response.<method>_<param>_<param>.json`` files (ethereum-etl's naming)
and from execution-apis ``.io`` transcripts (``>> request`` / ``<< response`` lines). With
``upstream`` set, calls that are not recorded are forwarded to that node (a real anvil), so the
same faults can be put in front of a live node.

Faults are queued and consumed one per HTTP request, in order, before normal replay:
``429`` (Retry-After 0.05 s), ``429-33200`` (Infura body -33200, no Retry-After),
``429-32005`` (body -32005 with ``data.backoff_seconds``), ``500``/``502``/``503``, ``401``,
``402``, ``rpc-32005`` (first item of the answer is a JSON-RPC limit error with backoff_seconds),
``rpc-32603`` (every other item fails with an internal error), ``rpc-32000`` (the last item fails
with geth's "header not found", what a load-balanced node that lags behind answers), ``null`` (the first item's result
is null), ``timeout`` (sleep past the client's timeout), ``truncated`` (half a body),
``malformed`` (a body that is not JSON), ``reset`` (the connection is closed with no answer),
``reversed`` (a clean answer, its items in reverse order: JSON-RPC allows any order),
``receipts-short`` (the first non-empty list of receipts in the answer loses its last receipt).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BACKOFF_S = 0.05  # what the injected -32005 / -33200 bodies ask for


def _key(method: str, params: list) -> str:
    return "_".join([method, *[json.dumps(p) if isinstance(p, (dict, list)) else str(p) for p in params]]).lower()


def read_transcript(path: Path) -> list[tuple[dict, dict]]:
    """(request, response) pairs of an execution-apis ``.io`` file."""
    pairs, request = [], None
    for line in Path(path).read_text().splitlines():
        if line.startswith(">> "):
            request = json.loads(line[3:])
        elif line.startswith("<< ") and request is not None:
            pairs.append((request, json.loads(line[3:])))
            request = None
    return pairs


class LocalServer:
    """A stdlib HTTP server on 127.0.0.1, port 0, in its own thread: ``with`` starts and stops it."""

    def _listen(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ReplayServer(LocalServer):
    def __init__(self, *dirs: Path, timeout_sleep_s: float = 1.5, upstream: str | None = None):
        self.responses: dict[str, dict] = {}
        for d in dirs:
            for f in Path(d).glob("web3_response.*.json"):
                self.responses[f.name.removeprefix("web3_response.").removesuffix(".json").lower()] = json.loads(f.read_text())
            for f in Path(d).rglob("*.io"):
                for req, resp in read_transcript(f):
                    self.responses[_key(req["method"], req["params"])] = resp
        self.faults: list[str] = []
        # fault_for(body) -> a fault name or None: a fault aimed at one request by its content
        # (e.g. the batch of one block), whatever the order in which concurrent requests arrive
        self.fault_for = None
        self.requests: list[dict] = []
        self.timeout_sleep_s = timeout_sleep_s
        self.upstream = upstream
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body})
                fault = server.faults.pop(0) if server.faults else None
                if fault is None and server.fault_for is not None:
                    fault = server.fault_for(body)
                if fault == "timeout":
                    time.sleep(server.timeout_sleep_s)
                    fault = None
                if fault == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault == "429-33200":
                    err = {"jsonrpc": "2.0", "id": None, "error": {"code": -33200, "message": "Too Many Requests",
                                                                   "data": {"backoff_seconds": BACKOFF_S}}}
                    return self._send(429, json.dumps(err).encode())
                if fault == "429-32005":
                    err = {"jsonrpc": "2.0", "id": None, "error": {"code": -32005, "message": "project ID request rate exceeded",
                                                                   "data": {"backoff_seconds": BACKOFF_S}}}
                    return self._send(429, json.dumps(err).encode())
                if fault and fault.isdigit():
                    headers = {"Retry-After": "0.05"} if fault == "429" else {}
                    return self._send(int(fault), json.dumps({"error": f"injected {fault}"}).encode(), headers)
                if fault == "malformed":
                    return self._send(200, b"<html>502 Bad Gateway</html>")
                answer = server.answer(body, fault)
                payload = json.dumps(answer).encode()
                if fault == "truncated":
                    payload = payload[: len(payload) // 2]
                self._send(200, payload)

        self._listen(Handler)

    def _forward(self, body):
        req = urllib.request.Request(self.upstream, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def _one(self, item: dict) -> dict:
        recorded = self.responses.get(_key(item["method"], item["params"]))
        if recorded is not None:
            return {**recorded, "id": item["id"]}
        if self.upstream:
            return self._forward(item)
        return {"jsonrpc": "2.0", "id": item["id"], "error": {"code": -32601, "message": "not recorded"}}

    def answer(self, body, fault: str | None = None):
        items = body if isinstance(body, list) else [body]
        if self.upstream and not any(_key(i["method"], i["params"]) in self.responses for i in items):
            out = self._forward(items)  # one upstream batch, not one request per item
            out = sorted(out, key=lambda r: [i["id"] for i in items].index(r["id"]))
        else:
            out = [self._one(i) for i in items]
        if fault == "rpc-32005" and out:
            out[0] = {"jsonrpc": "2.0", "id": items[0]["id"], "error": {
                "code": -32005, "message": "daily request count exceeded, request rate limited",
                "data": {"backoff_seconds": BACKOFF_S}}}
        if fault == "rpc-32603":
            for k in range(0, len(out), 2):
                out[k] = {"jsonrpc": "2.0", "id": items[k]["id"], "error": {"code": -32603, "message": "internal error"}}
        if fault == "rpc-32000" and out:
            out[-1] = {"jsonrpc": "2.0", "id": items[-1]["id"], "error": {"code": -32000, "message": "header not found"}}
        if fault == "null" and out:
            out[0] = {"jsonrpc": "2.0", "id": items[0]["id"], "result": None}
        if fault == "reversed":
            out = out[::-1]
        if fault == "receipts-short":
            for k, item in enumerate(out):
                if isinstance(item.get("result"), list) and item["result"]:
                    out[k] = {**item, "result": item["result"][:-1]}
                    break
        return out if isinstance(body, list) else out[0]

    def calls_of(self, method: str) -> int:
        n = 0
        for r in self.requests:
            items = r["body"] if isinstance(r["body"], list) else [r["body"]]
            n += sum(1 for i in items if i["method"] == method)
        return n

