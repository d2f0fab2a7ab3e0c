"""What a JSON-RPC answer means, for the chain client (:mod:`tasks.clients.rpc`): which errors are
worth sending again, how long the provider asks us to wait, and how a body is decoded (orjson, or
straight into polars columns).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import polars as pl

try:  # a Prefect dependency, so present; parsing is the client's hot spot (2-3x json's speed)
    import orjson

    loads, dumps = orjson.loads, orjson.dumps
except ImportError:  # pragma: no cover
    loads, dumps = json.loads, lambda obj: json.dumps(obj).encode()

# JSON-RPC errors that say the request itself is wrong (parse error, invalid request, method not
# found, invalid params; 3 = execution reverted): not retried. Every other error code is (limits
# -32005/-33200, internal -32603, a lagging node's -32000, ...).
PERMANENT_RPC_CODES = {-32700, -32600, -32601, -32602, 3}
LIMIT_RPC_CODES = {-32005, -33200}  # rate or credit limit exceeded (two spellings)
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


def retryable(error: Any) -> bool:
    return isinstance(error, dict) and error.get("code") not in PERMANENT_RPC_CODES


def backoff_hint(error: Any) -> float | None:
    """Infura's -32005 carries data.backoff_seconds; honour it when present."""
    if isinstance(error, dict) and isinstance(error.get("data"), dict):
        value = error["data"].get("backoff_seconds")
        if isinstance(value, (int, float)) and value >= 0:
            return float(value)
    return None


def retry_wait(headers: Mapping[str, str], data: bytes) -> float | None:
    """How long a refused request (429, 5xx) asks us to wait: Retry-After (seconds) first, else the
    body's -33200/-32005 ``backoff_seconds``; None when it does not say."""
    retry_after = (headers.get("Retry-After") or "").strip()
    try:
        if retry_after:
            return max(0.0, float(retry_after))
    except ValueError:
        pass  # an HTTP date: fall back to the body or our own backoff
    try:
        body = loads(data)
    except ValueError:
        return None
    errors = body if isinstance(body, list) else [body]
    hints = [backoff_hint(e.get("error")) for e in errors if isinstance(e, dict)]
    hints = [h for h in hints if h is not None]
    return max(hints) if hints else None


def columns_or_json(schema: Mapping[str, Any], ids: list[int]):
    """A decoder: the answer as a polars frame (rows in ``ids`` order) when every item is clean,
    else the JSON decoded as usual (a malformed body still raises ValueError: retried)."""

    def decode(content: bytes) -> Any:
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
        return loads(content)

    return decode
