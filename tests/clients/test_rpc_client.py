"""The real JSON-RPC client against a real local HTTP server replaying recorded mainnet data."""

import time

import pytest

from tasks.chain.stream import fetch_blocks
from tasks.clients.limits import CreditLedger, RateLimiter
from tasks.clients.rpc import HttpJsonRpc
from tasks.core.errors import RpcAuthError, RpcBudgetError, RpcError, RpcQuotaError, RpcUnreachableError
from tests.conftest import RPC_DATA
from tests.replay import BACKOFF_S, LocalServer, ReplayServer

CASES = [RPC_DATA / "blocks_with_transactions", RPC_DATA / "block_with_logs"]


def client(url: str, **kw) -> HttpJsonRpc:
    opts = dict(requests_per_second=500, timeout_s=0.5, max_retries=3, backoff_initial_s=0.01, backoff_max_s=0.2,
                method_credits={"eth_getBlockByNumber": 80})
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


@pytest.mark.parametrize("fault", ["429", "429-33200", "429-32005", "500", "502", "503", "timeout", "truncated",
                                   "malformed", "reset", "rpc-32005", "rpc-32603", "rpc-32000", "null"])
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


def test_after_a_402_nothing_more_is_sent_until_the_reset(replay):
    rpc = client(replay.url)
    replay.faults = ["402"]
    with pytest.raises(RpcQuotaError):
        rpc.call("eth_blockNumber", [])
    # other threads' queued batches and later calls fail here, without knocking again
    with pytest.raises(RpcQuotaError, match="HTTP 402"):
        fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=1, in_flight=2)
    assert len(replay.requests) == 1


def test_tally_counts_what_each_thread_sent(replay):
    from concurrent.futures import ThreadPoolExecutor

    rpc = client(replay.url)

    def one(n: int) -> dict:
        with rpc.tally() as mine:
            fetch_blocks(rpc, n, n, blocks_per_batch=1)
        return mine

    with ThreadPoolExecutor(2) as pool:
        tallies = list(pool.map(one, [0xB872, 0xB873]))
    assert [t["credits"] for t in tallies] == [80, 80] and all(t["requests"] == 1 for t in tallies)
    assert rpc.stats["credits"] == 160


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


def test_only_failed_items_of_a_batch_are_sent_again(replay):
    replay.faults = ["rpc-32603"]  # the first of the two items fails
    rpc = client(replay.url)
    blocks = fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    assert [b["number"] for b in blocks] == ["0xb872", "0xb873"]
    assert [len(r["body"]) for r in replay.requests] == [2, 1]
    assert replay.requests[1]["body"][0]["params"][0] == "0xb872"


def test_an_unknown_method_fails_at_once_with_one_line(replay):
    """-32601 (method not found: a provider without eth_getBlockReceipts) cannot get better by waiting."""
    rpc = client(replay.url, max_retries=3)
    for send in (lambda: rpc.call("eth_notAMethod", []), lambda: rpc.batch([("eth_notAMethod", [])])):
        with pytest.raises(RpcError) as err:
            send()
        assert "\n" not in str(err.value) and "-32601" in str(err.value)
    assert len(replay.requests) == 2 and rpc.stats["retries"] == 0


def test_null_block_is_retried_then_fails_with_one_line(replay):
    replay.faults = ["null"] * 3
    with pytest.raises(RpcError) as err:
        fetch_blocks(client(replay.url, max_retries=2), 0xB872, 0xB872, blocks_per_batch=1)
    assert "\n" not in str(err.value) and "null result" in str(err.value)
    assert len(replay.requests) == 3


@pytest.mark.parametrize("fault", ["429-33200", "429-32005", "rpc-32005"])
def test_provider_backoff_seconds_is_honoured(replay, fault):
    replay.faults = [fault]
    rpc = client(replay.url, backoff_initial_s=0.0, backoff_jitter=0.0)  # our own backoff would be 0 s
    t0 = time.perf_counter()
    fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    assert time.perf_counter() - t0 >= BACKOFF_S


def test_retry_after_header_is_honoured(replay):
    replay.faults = ["429"]  # Retry-After: 0.05
    rpc = client(replay.url, backoff_initial_s=0.0, backoff_jitter=0.0)
    t0 = time.perf_counter()
    rpc.call("eth_getBlockByNumber", ["0xb872", True])
    assert time.perf_counter() - t0 >= 0.05


def test_quota_402_inside_a_batch_stops_without_retry(replay):
    replay.faults = ["402"]
    with pytest.raises(RpcQuotaError):
        fetch_blocks(client(replay.url), 0xB872, 0xB873, blocks_per_batch=2)
    assert len(replay.requests) == 1


def test_backoff_is_exponential_with_jitter(replay):
    replay.faults = ["500"] * 3
    rpc = client(replay.url, backoff_initial_s=0.04, backoff_max_s=1.0, backoff_jitter=0.5)
    t0 = time.perf_counter()
    rpc.call("eth_getBlockByNumber", ["0xb872", True])
    waited = time.perf_counter() - t0
    assert 0.5 * (0.04 + 0.08 + 0.16) <= waited < 0.04 + 0.08 + 0.16 + 0.5  # each wait in [0.5, 1] x 2^n


def test_every_call_in_a_batch_is_charged_by_method(replay):
    rpc = client(replay.url, method_credits={"eth_getBlockByNumber": 80, "eth_chainId": 5})
    fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    assert rpc.stats["credits"] == 160 and rpc.stats["requests"] == 1
    replay.faults = ["500"]
    fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    assert rpc.stats["credits"] == 160 + 2 * 160  # a retried request is charged again


def test_credit_bucket_paces_batches_by_their_cost(replay):
    rpc = client(replay.url, credits_per_second=1600)  # 10 batches of 160 credits a second
    t0 = time.perf_counter()
    for _ in range(20):
        fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    # 3,200 credits, the first 1,600 from the full bucket: at least 1 s of pacing
    assert time.perf_counter() - t0 >= 0.95
    assert rpc.stats["credits"] == 3200


def test_batch_size_stays_within_one_second_of_credits():
    rpc = client("http://127.0.0.1:9", credits_per_second=500,
                 method_credits={"eth_getBlockByNumber": 80, "eth_getBlockReceipts": 1000})
    assert rpc.batch_size("eth_getBlockByNumber", 50) == 6  # 480 credits
    assert rpc.batch_size("eth_getBlockReceipts", 50) == 1
    assert client("http://127.0.0.1:9").batch_size("eth_getBlockByNumber", 50) == 50


def test_batch_size_shrinks_on_errors_and_grows_back(replay):
    rpc = client(replay.url, max_batch=2, grow_after_batches=2)
    replay.faults = ["503"]
    fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    assert rpc.sizer.current == 1
    fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)  # two quiet batches of one block
    assert rpc.sizer.current == 2
    assert [len(r["body"]) for r in replay.requests] == [2, 2, 1, 1]


def test_daily_credit_budget_stops_before_sending_and_persists(replay, tmp_path):
    ledger_file = tmp_path / "credits.json"
    rpc = client(replay.url, ledger=CreditLedger(400, ledger_file, today=lambda: "2024-05-01"))
    fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    with pytest.raises(RpcBudgetError) as err:
        fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=2)
    assert isinstance(err.value, RpcQuotaError) and "\n" not in str(err.value) and "320 of 400" in str(err.value)
    assert len(replay.requests) == 2  # the refused batch never left
    again = client(replay.url, ledger=CreditLedger(400, ledger_file, today=lambda: "2024-05-01"))
    with pytest.raises(RpcBudgetError):  # a new run the same UTC day sees what was spent
        fetch_blocks(again, 0xB872, 0xB873, blocks_per_batch=2)
    tomorrow = client(replay.url, ledger=CreditLedger(400, ledger_file, today=lambda: "2024-05-02"))
    assert tomorrow.call("eth_getBlockByNumber", ["0xb872", True])["number"] == "0xb872"


def test_rate_limiter_lets_an_oversized_request_through_in_debt():
    limiter = RateLimiter(rate=100)  # bucket of 100 units
    assert limiter.acquire(250) == 0.0  # full bucket: goes, leaves 150 of debt
    t0 = time.perf_counter()
    limiter.acquire(1)
    assert time.perf_counter() - t0 >= 1.4  # the debt is paid back at 100 units/s


def test_batches_in_flight_come_back_in_block_order(replay):
    rpc = client(replay.url)
    replay.faults = ["503"]  # one of the concurrent batches is retried
    blocks = fetch_blocks(rpc, 0xB872, 0xB873, blocks_per_batch=1, in_flight=2)
    assert [b["number"] for b in blocks] == ["0xb872", "0xb873"]
    assert len(replay.requests) == 3


class SelfSignedServer(LocalServer):
    """A real local HTTPS server: the suite's LocalServer behind TLS, with a certificate no CA signed."""

    def __init__(self, tmp_path):
        import datetime as dt
        import http.server
        import ssl

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + dt.timedelta(hours=1)).sign(key, hashes.SHA256()))
        pem = tmp_path / "cert.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

        class Answer(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = b'{"jsonrpc": "2.0", "id": 1, "result": "0x1"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._listen(Answer)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pem)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)

    @property
    def url(self) -> str:
        return "https" + super().url.removeprefix("http")


def test_https_certificates_are_verified(tmp_path):
    """The transport (urllib3 with certifi's CA bundle) checks the provider's certificate: a
    self-signed one is refused in one line, the key not in it, never answered as if trusted."""
    with SelfSignedServer(tmp_path) as server:
        with pytest.raises(RpcError) as err:
            client(server.url + "/v3/{api_key}", api_key="k3y-tls-123", max_retries=1).call("eth_blockNumber", [])
    assert "SSL" in str(err.value) and "\n" not in str(err.value) and "k3y-tls-123" not in str(err.value)


def test_a_steady_background_of_faults_does_not_sink_the_batch_size():
    """One batch in eight retried, for 400 batches: the size stays near its maximum (the old rule, halve on
    every fault and grow only after 10 faultless batches in a row, sank it to 1 and kept it there)."""
    from tasks.clients.limits import AdaptiveBatchSize

    sizer = AdaptiveBatchSize(maximum=32, grow_after=10)
    sizes = []
    for i in range(400):
        sizer.settle(troubled=(i % 8 == 7))
        sizes.append(sizer.current)
    assert min(sizes[-100:]) >= 16 and sizes[-1] >= 16
    storm = AdaptiveBatchSize(maximum=32, grow_after=10)  # but a real storm still shrinks it
    for _ in range(6):
        storm.settle(troubled=True)
    assert storm.current == 1
