"""web3 on top of our client: web3's types, checksums and ABI decoding, our pacing and retries.

The hot path (full blocks and receipts, thousands of calls a day) is raw JSON-RPC batches read
straight into columns (``HttpJsonRpc.batch``): web3's result formatting costs more than the parse
there (issue #4: 2,739 tx/s through ``w3.batch_requests()`` against 4,887 for a raw client). For
everything else - the endpoint's chain id, a contract read, decoding calldata with an ABI - web3
is the better interface, and :class:`PacedProvider` gives it without a second network path: each
call web3 makes goes through the same ``HttpJsonRpc`` (request and credit buckets, the daily
budget, retries with backoff, the stop after HTTP 402, the key kept out of every message), and is
counted in the same ``stats``.

    w3 = web3_for(rpc)                      # rpc: HttpJsonRpc.from_settings(...)
    w3.eth.get_block(19_000_000)["baseFeePerGas"]
    w3.eth.contract(address=..., abi=...).functions.decimals().call()

web3 is imported here only, so modules that do not talk to web3 start without it (~0.9 s).
"""

from __future__ import annotations

import json
from typing import Any

from web3 import Web3
from web3.providers.base import JSONBaseProvider

from tasks.clients.rpc import ChainRpc, RpcError


class PacedProvider(JSONBaseProvider):
    """A web3 provider whose requests are sent by a :class:`~tasks.clients.rpc.ChainRpc`."""

    def __init__(self, rpc: ChainRpc):
        super().__init__()
        self.rpc = rpc

    def _plain(self, method: str, params: Any) -> list[Any]:
        # web3's encoder knows its own types (HexBytes, AttributeDict...); our client sends JSON
        return json.loads(self.encode_rpc_request(method, params))["params"]

    def make_request(self, method, params):  # web3's signature
        result = self.rpc.call(method, self._plain(method, params))  # raises a one-line RpcError
        return {"jsonrpc": "2.0", "id": 0, "result": result}

    def make_batch_request(self, requests):  # web3's signature
        results = self.rpc.batch([(method, self._plain(method, params)) for method, params in requests])
        return [{"jsonrpc": "2.0", "id": i, "result": r} for i, r in enumerate(results)]

    def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            self.rpc.call("web3_clientVersion", [])
        except RpcError:
            if show_traceback:
                raise
            return False
        return True


def web3_for(rpc: ChainRpc) -> Web3:
    """A ``Web3`` over ``rpc`` (made once per client)."""
    w3 = getattr(rpc, "_web3", None)
    if w3 is None:
        w3 = Web3(PacedProvider(rpc))
        rpc._web3 = w3  # type: ignore[attr-defined]
    return w3


def endpoint_chain_id(rpc: ChainRpc, expected: int | None = None) -> int:
    """The endpoint's chain id; with ``expected`` set, a different chain stops the run before
    anything is fetched (a Sepolia URL must not fill a mainnet lake)."""
    chain_id = web3_for(rpc).eth.chain_id
    if expected is not None and chain_id != expected:
        raise RpcError(f"{rpc.url} serves chain id {chain_id}, but rpc.chain_id is {expected}: check rpc.url")
    return chain_id
