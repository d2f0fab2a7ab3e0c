"""The real JSON-RPC client against a real local HTTP server replaying recorded mainnet data."""

import pytest

from tasks.chain.job import fetch_blocks
from tasks.clients.rpc import HttpJsonRpc, RateLimiter, RpcAuthError, RpcError, RpcQuotaError, RpcUnreachableError
from tests.conftest import RPC_DATA
from tests.replay import ReplayServer

CASES = [RPC_DATA / "blocks_with_transactions", RPC_DATA / "block_with_logs"]


def client(url: str, **kw) -> HttpJsonRpc:
    opts = dict(requests_per_second=500, timeout_s=0.5, max_retries=3, backoff_initial_s=0.01, backoff_max_s=0.05)
    return HttpJsonRpc(url, **{**opts, **kw})


@pytest.fixture
def replay():
    with ReplayServer(*CASES) as server:
        yield server


def test_batch_returns_results_in_call_order(replay):
    rpc = client(replay.url)
    blocks = fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    assert [b["number"] for b in blocks] == ["0xb872", "0xb873"]
    assert len(replay.requests) == 1 and isinstance(replay.requests[0]["body"], list)


@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "timeout", "truncated", "rpc-32005"])
def test_transient_faults_are_retried(replay, fault):
    replay.faults = [fault, fault]
    rpc = client(replay.url)
    blocks = fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    assert [b["number"] for b in blocks] == ["0xb872", "0xb873"]
    assert rpc.stats["retries"] >= 2


def test_single_call_retries_rpc_limit_error(replay):
    replay.faults = ["rpc-32005"]
    rpc = client(replay.url)
    assert rpc.call("eth_getBlockByNumber", ["0xb872", True])["number"] == "0xb872"


def test_gives_up_with_one_line_after_max_retries(replay):
    replay.faults = ["503"] * 10
    with pytest.raises(RpcError) as err:
        client(replay.url, max_retries=2).call("eth_getBlockByNumber", ["0xb872", True])
    assert "\n" not in str(err.value) and "HTTP 503" in str(err.value)


def test_bad_key_stops_at_once_and_never_leaks(replay):
    replay.faults = ["401"]
    rpc = client(replay.url + "/v3/{api_key}", api_key="s3cr3t-key-value")
    with pytest.raises(RpcAuthError) as err:
        rpc.call("eth_blockNumber", [])
    assert "s3cr3t-key-value" not in str(err.value) and "***" in str(err.value)
    assert replay.requests[0]["path"] == "/v3/s3cr3t-key-value"  # the key did reach the server
    assert len(replay.requests) == 1  # and was not retried


def test_quota_exhausted_is_not_retried(replay):
    replay.faults = ["402"]
    with pytest.raises(RpcQuotaError, match="quota"):
        client(replay.url).call("eth_blockNumber", [])
    assert len(replay.requests) == 1


def test_missing_key_for_templated_url():
    with pytest.raises(RpcAuthError, match="rpc.api_key is not set"):
        client("https://mainnet.infura.io/v3/{api_key}").call("eth_blockNumber", [])


def test_unreachable_endpoint_is_one_line():
    with pytest.raises(RpcUnreachableError) as err:
        client("http://127.0.0.1:9/v3/{api_key}", api_key="k3y-123", max_retries=1).call("eth_blockNumber", [])
    assert "\n" not in str(err.value) and "k3y-123" not in str(err.value)


def test_rate_limiter_paces_requests():
    import time

    limiter = RateLimiter(rate=50, burst=1)
    t0 = time.perf_counter()
    for _ in range(11):
        limiter.acquire()
    assert time.perf_counter() - t0 >= 0.18  # 10 waits of 1/50 s
