"""The embedded default chain: a local anvil node seeded with SYNTHETIC traffic.

anvil comes from the npm package ``@foundry-rs/anvil`` (``npm ci`` in the repo root installs it;
its platform package ships the binary). The node starts offline with mining off; the seeder
sends transactions with explicit nonces and mines block by block at chosen timestamps, so the
chain covers real calendar days aligned with the bundled price and tweet samples. Legacy and
EIP-1559 transactions come from separate senders (mixing both on one sender can leave nonce
gaps). Everything it produces is synthetic and is labelled so wherever it is reported.
"""

from __future__ import annotations

import math
import platform
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from tasks.chain.blockrange import day_start_ts
from tasks.core.errors import LocalNodeError
from tasks.core.logs import get_logger
from tasks.core.settings import REPO_ROOT

# Init code that deploys a 10-byte runtime returning 42: a real contract creation.
_INIT_CODE = "0x600a600c600039600a6000f3602a60005260206000f3"
_SELECTORS = ["0xa9059cbb", "0x095ea7b3", "0x23b872dd", "0x7ff36ab5", "0x38ed1739"]  # ERC-20 / router
CHAIN_ID = 31337


def find_anvil(configured: Path | None = None) -> Path:
    if configured:
        if not Path(configured).is_file():
            raise LocalNodeError(f"demo.anvil_bin: no file at {configured}")
        return Path(configured)
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "amd64")
    system = platform.system().lower()
    candidate = REPO_ROOT / "node_modules" / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / "anvil"
    if candidate.is_file():
        return candidate
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise LocalNodeError("anvil not found: run `npm ci` in the repo root (needs Node.js), or set demo.anvil_bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalNode:
    url: str
    process: subprocess.Popen
    genesis_ts: int

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_anvil(genesis_ts: int, accounts: int, anvil_bin: Path | None = None, port: int | None = None,
                chain_id: int = CHAIN_ID) -> LocalNode:
    binary = find_anvil(anvil_bin)
    port = port or free_port()
    cmd = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--timestamp", str(genesis_ts),
           "--no-mining", "--accounts", str(accounts), "--balance", "10000000",
           "--chain-id", str(chain_id), "--silent"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = (proc.stderr.read() or b"").decode(errors="replace").strip().splitlines()
            raise LocalNodeError(f"anvil exited at start: {err[-1] if err else proc.returncode}")
        try:
            requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1)
            return LocalNode(url, proc, genesis_ts)
        except requests.RequestException:
            time.sleep(0.05)
    proc.kill()
    raise LocalNodeError(f"anvil did not answer on {url} within 20 s")


@dataclass(frozen=True)
class SeedReport:
    """What the chain holds after seeding, counted from its blocks (not from what was sent)."""

    days: int
    blocks: int
    transactions: int
    contract_creations: int
    legacy: int
    eip1559: int
    seconds: float
    not_mined: int = 0  # sent and accepted by the node, but in no block (see seed_chain)


def seed_chain(url: str, start: date, end: date, *, accounts: int, blocks_per_day: int,
               mean_txs_per_day: int, seed: int, finality_blocks: int) -> SeedReport:
    """Fill the node with synthetic traffic over [start, end] (UTC days), block by block."""
    from web3 import Web3

    log = get_logger()
    t0 = time.perf_counter()
    rng = random.Random(seed)
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 60}))
    dev = list(w3.eth.accounts)[:accounts]
    half = len(dev) // 2
    eip1559_senders, legacy_senders = dev[:half], dev[half:]
    # Receivers: the dev accounts plus a pool of fresh addresses that appear over time.
    pool = [Web3.to_checksum_address("0x" + rng.randbytes(20).hex()) for _ in range(accounts * 25)]
    nonces = {a: 0 for a in dev}
    n_days = (end - start).days + 1
    counts = {"blocks": 0, "transactions": 0, "contract_creations": 0, "legacy": 0, "eip1559": 0}  # as sent
    level = 1.0
    for d in range(n_days):
        day = start + timedelta(days=d)
        level = min(3.0, max(0.3, level * math.exp(rng.gauss(0, 0.15))))  # slow random drift
        weekly = 0.8 if day.weekday() >= 5 else 1.0
        n_tx = max(1, int(rng.gauss(mean_txs_per_day * level * weekly, mean_txs_per_day * 0.2)))
        seen = pool[: min(len(pool), 20 + d * len(pool) // n_days)]  # new addresses keep arriving
        per_block = [0] * blocks_per_day
        for _ in range(n_tx):
            per_block[rng.randrange(blocks_per_day)] += 1
        for b, k in enumerate(per_block):
            ts = day_start_ts(day) + int((b + rng.uniform(0.05, 0.95)) * 86400 / blocks_per_day)
            txs = _fees_falling_by_nonce([_synthetic_tx(rng, eip1559_senders, legacy_senders, dev, seen, nonces, counts)
                                          for _ in range(k)])
            # web3 does not batch eth_sendTransaction; its provider sends a raw batch.
            sends = [("eth_sendTransaction", [_to_rpc(tx)]) for tx in txs]
            if sends:
                errors = [r["error"] for r in w3.provider.make_batch_request(sends) if "error" in r]
                if errors:
                    raise LocalNodeError(f"anvil refused a seeded transaction: {errors[0]}")
            w3.provider.make_request("evm_mine", [{"timestamp": ts, "blocks": 1}])
            counts["blocks"] += 1
            counts["transactions"] += k
        if d % 15 == 0:
            log.info("seeded %s: %d txs so far (synthetic)", day, counts["transactions"])
    # Close the last day and bury it under enough blocks to count as final.
    w3.provider.make_request("evm_setNextBlockTimestamp", [day_start_ts(end + timedelta(days=1)) + 60])
    w3.provider.make_request("anvil_mine", [hex(finality_blocks + 2), hex(12)])
    mined = count_mined(w3)
    if mined["transactions"] != counts["transactions"]:
        log.warning("%d of %d seeded transactions are in no block (anvil drops some; synthetic chain)",
                    counts["transactions"] - mined["transactions"], counts["transactions"])
    return SeedReport(days=n_days, seconds=round(time.perf_counter() - t0, 2),
                      not_mined=counts["transactions"] - mined["transactions"], **mined)


def count_mined(w3, batch: int = 200) -> dict[str, int]:
    """What the node's blocks 1..head hold: blocks, transactions by type, contract creations.

    Counted from the chain, not from what was sent: an accepted transaction is not always mined
    (before ``_fees_falling_by_nonce``, a 600-block seed reported 1,912 sent for 1,875 on chain)."""
    head = w3.eth.block_number
    counts = {"blocks": head, "transactions": 0, "contract_creations": 0, "legacy": 0, "eip1559": 0}
    for lo in range(1, head + 1, batch):
        calls = [("eth_getBlockByNumber", [hex(n), True]) for n in range(lo, min(head, lo + batch - 1) + 1)]
        for answer in w3.provider.make_batch_request(calls):
            if "error" in answer or not answer.get("result"):
                raise LocalNodeError(f"anvil did not return a seeded block: {answer.get('error')}")
            for tx in answer["result"]["transactions"]:
                kind = int(tx.get("type") or "0x0", 16)
                counts["transactions"] += 1
                counts["legacy"] += kind == 0
                counts["eip1559"] += kind == 2
                counts["contract_creations"] += tx.get("to") is None
    return counts


def _fees_falling_by_nonce(txs: list[dict]) -> list[dict]:
    """One block's transactions with each legacy sender's gas prices (the same prices) in falling nonce
    order: anvil drops a sender's transaction that pays more than its predecessor pending in the same
    block, and every later nonce of that sender then waits forever (23% of the demo's transactions)."""
    own: dict[str, list[dict]] = {}
    for tx in txs:
        if "gasPrice" in tx:
            own.setdefault(tx["from"], []).append(tx)
    for sent in own.values():
        for tx, price in zip(sent, sorted((t["gasPrice"] for t in sent), reverse=True), strict=True):
            tx["gasPrice"] = price
    return txs


def _to_rpc(tx: dict) -> dict:
    return {k: (hex(v) if isinstance(v, int) else v) for k, v in tx.items()}


def _synthetic_tx(rng, eip1559_senders, legacy_senders, dev, seen, nonces, counts) -> dict:
    legacy = rng.random() < 0.3
    sender = rng.choice(legacy_senders if legacy else eip1559_senders)
    tx: dict = {"from": sender, "nonce": nonces[sender]}
    nonces[sender] += 1
    r = rng.random()
    if r < 0.04:
        tx.update({"data": _INIT_CODE, "gas": 120_000, "value": 0})
        counts["contract_creations"] += 1
    elif r < 0.30:
        to = rng.choice(seen)
        arg = rng.randbytes(64).hex()
        tx.update({"to": to, "data": rng.choice(_SELECTORS) + arg, "gas": 80_000, "value": 0})
    else:
        to = rng.choice(seen + dev)
        eth = min(5000.0, math.exp(rng.gauss(-1.0, 2.0)))  # heavy-tailed: some above 2^64 wei
        tx.update({"to": to, "value": int(eth * 10**18), "gas": 21_000})
    if legacy:
        tx["gasPrice"] = rng.randint(20, 120) * 10**9
        counts["legacy"] += 1
    else:
        tx["maxFeePerGas"] = 150 * 10**9
        tx["maxPriorityFeePerGas"] = rng.randint(1, 4) * 10**9
        counts["eip1559"] += 1
    return tx


@contextmanager
def seeded_local_node(start: date, end: date, *, accounts: int, blocks_per_day: int, mean_txs_per_day: int,
                      seed: int, finality_blocks: int, anvil_bin: Path | None = None,
                      chain_id: int = CHAIN_ID) -> Iterator[tuple[LocalNode, SeedReport]]:
    """Start anvil just before ``start`` and seed it; stop it on exit."""
    node = start_anvil(day_start_ts(start) - 3600, accounts, anvil_bin, chain_id=chain_id)
    try:
        report = seed_chain(node.url, start, end, accounts=accounts, blocks_per_day=blocks_per_day,
                            mean_txs_per_day=mean_txs_per_day, seed=seed, finality_blocks=finality_blocks)
        yield node, report
    finally:
        node.stop()


__all__ = ["LocalNode", "LocalNodeError", "SeedReport", "count_mined", "find_anvil", "seed_chain", "seeded_local_node",
           "start_anvil", "CHAIN_ID"]
