"""A real local HTTP server (stdlib, own thread, port 0) replaying recorded JSON-RPC responses.

Responses come from ``web3_response.<method>_<param>_<param>.json`` files (ethereum-etl's
naming). Faults are queued and consumed one per HTTP request, in order, before normal replay:
``429`` (with Retry-After), ``500``/``502``/``503``, ``rpc-32005`` (JSON-RPC limit error),
``timeout`` (sleep past the client's timeout), ``truncated`` (half a body), ``401``, ``402``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _key(method: str, params: list) -> str:
    return "_".join([method, *[str(p) for p in params]]).lower()


class ReplayServer:
    def __init__(self, *dirs: Path, timeout_sleep_s: float = 1.5):
        self.responses: dict[str, dict] = {}
        for d in dirs:
            for f in Path(d).glob("web3_response.*.json"):
                self.responses[f.name.removeprefix("web3_response.").removesuffix(".json").lower()] = json.loads(f.read_text())
        self.faults: list[str] = []
        self.requests: list[object] = []
        self.timeout_sleep_s = timeout_sleep_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body})
                fault = server.faults.pop(0) if server.faults else None
                if fault == "timeout":
                    time.sleep(server.timeout_sleep_s)
                    fault = None
                if fault and fault.isdigit():
                    payload = json.dumps({"error": f"injected {fault}"}).encode()
                    self.send_response(int(fault))
                    if fault == "429":
                        self.send_header("Retry-After", "0.05")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                answer = server.answer(body, rpc_fault=fault == "rpc-32005")
                payload = json.dumps(answer).encode()
                if fault == "truncated":
                    payload = payload[: len(payload) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, body, rpc_fault: bool = False):
        if isinstance(body, list):
            out = [self.answer(item) for item in body]
            if rpc_fault and out:  # the first item of the batch hits the provider's limit
                out[0] = {"jsonrpc": "2.0", "id": body[0]["id"], "error": {"code": -32005, "message": "limit exceeded"}}
            return out
        if rpc_fault:
            return {"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32005, "message": "daily request count exceeded"}}
        recorded = self.responses.get(_key(body["method"], body["params"]))
        if recorded is None:
            return {"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32601, "message": "not recorded"}}
        return {**recorded, "id": body["id"]}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "ReplayServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
