"""web3 over our client: web3's types and batches, our pacing, credits, retries and key hygiene.

Real parts: a local HTTP server replaying recorded mainnet blocks (with injected faults) and the
seeded local anvil node."""

import pytest
from web3 import Web3

from tasks.chain.localnode import CHAIN_ID
from tasks.clients.rpc import HttpJsonRpc
from tasks.clients.web3_provider import endpoint_chain_id, web3_for
from tasks.core.errors import RpcError
from tests.clients.test_rpc_client import client as rpc_client
from tests.conftest import RPC_DATA
from tests.replay import ReplayServer

KEY = "9f2c4e1a7b3d5f60812a4c6e8b0d2f47"


@pytest.fixture
def replay():
    with ReplayServer(RPC_DATA / "blocks_with_transactions") as server:
        yield server


def client(url: str) -> HttpJsonRpc:
    return rpc_client(url + "/v3/{api_key}", api_key=KEY)  # the RPC tests' client, with a key in the URL


def test_web3_calls_go_through_our_retries_and_credits(replay):
    rpc = client(replay.url)
    w3 = web3_for(rpc)
    assert web3_for(rpc) is w3
    replay.faults = ["429", "rpc-32603"]  # web3's own retry would not resend either
    block = w3.eth.get_block(0xB872, full_transactions=True)
    assert block["number"] == 0xB872 and isinstance(block["timestamp"], int)  # web3's types
    sender = block["transactions"][0]["from"]
    assert Web3.is_checksum_address(sender)  # web3's checksummed addresses
    assert rpc.stats["retries"] == 2 and rpc.stats["calls"] == 1 and rpc.stats["credits"] == 3 * 80
    assert all(r["path"] == f"/v3/{KEY}" for r in replay.requests)


def test_a_web3_batch_is_one_request_charged_per_call(replay):
    rpc = client(replay.url)
    w3 = web3_for(rpc)
    with w3.batch_requests() as batch:
        batch.add(w3.eth.get_block(0xB872, full_transactions=True))  # what the recording holds
        batch.add(w3.eth.get_block(0xB873, full_transactions=True))
        blocks = batch.execute()
    assert [b["number"] for b in blocks] == [0xB872, 0xB873]
    assert len(replay.requests) == 1 and len(replay.requests[0]["body"]) == 2 and rpc.stats["credits"] == 160


def test_a_web3_error_is_our_one_line_without_the_key(replay):
    rpc = client(replay.url)
    with pytest.raises(RpcError) as err:
        web3_for(rpc).eth.get_block(0x1)  # not recorded: the server answers -32601
    message = str(err.value)
    assert "\n" not in message and KEY not in message and "***" in message and len(replay.requests) == 1


def test_the_endpoint_chain_is_checked_before_anything_is_fetched(seeded_node):
    node, _ = seeded_node
    rpc = HttpJsonRpc(node.url)
    assert endpoint_chain_id(rpc) == endpoint_chain_id(rpc, CHAIN_ID) == CHAIN_ID
    with pytest.raises(RpcError, match=f"serves chain id {CHAIN_ID}, but rpc.chain_id is 1") as err:
        endpoint_chain_id(rpc, 1)
    assert "\n" not in str(err.value)
