"""bench_chain_ingest: our full chain ingest (tx/s) against cryo on the same fixed local anvil chain.

Not a test: timings live here, never in tests/. What it measures, in one run on one machine:

- ours, receipts off and on: the whole job the ``ingest-chain`` flow task runs (day -> block range
  by binary search, batched ``eth_getBlockByNumber(n, true)`` [+ ``eth_getBlockReceipts``], map to
  the schemas, atomic parquet files, manifests), unpaced, against anvil;
- cryo 0.3.2 ``transactions`` (it also fetches receipts, so it is compared with receipts on) over
  the same blocks, through its Rust extension (its Python wrapper is broken);
- requests and credits per block from our client's counters (range search and batches included),
  extrapolated to a 7,200-block mainnet day as a share of the free tier's 3,000,000 daily credits.

The chain is fixed: seeded once (synthetic traffic, ``tasks/chain/localnode.py``), dumped with
``anvil_dumpState`` to ``var/bench/chain_ingest_state.json`` and loaded with ``--load-state`` on
every later run, so runs compare.

    .venv/bin/pip install cryo==0.3.2          # bench only; not a project dependency
    .venv/bin/python bench/bench_chain_ingest.py [--days 5 --blocks-per-day 500 --txs-per-day 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.chain.blockrange import BlockClock, day_start_ts
from tasks.chain.job import ChainJobConfig, ingest_chain_day, stream_for_days
from tasks.chain.localnode import CHAIN_ID, find_anvil, free_port, seed_chain, start_anvil
from tasks.clients.rpc import HttpJsonRpc
from tasks.core.settings import load_settings
from tasks.core.storage import Lake, Workspace

START = date(2021, 1, 1)
MAINNET_BLOCKS_PER_DAY = 7_200
FREE_DAILY_CREDITS = 3_000_000
FREE_CREDITS_PER_S = 500
FINALITY = 64


def rpc_post(url: str, method: str, params: list):
    r = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=600)
    return r.json()["result"]


def ensure_state(path: Path, days: int, blocks_per_day: int, txs_per_day: int) -> dict:
    meta_path = path.with_suffix(".meta.json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta["days"] == days and meta["blocks_per_day"] == blocks_per_day and meta["txs_per_day"] == txs_per_day:
            return meta
    print(f"seeding a fixed synthetic chain: {days} days x {blocks_per_day} blocks, ~{txs_per_day} txs/day ...")
    end = START + timedelta(days=days - 1)
    node = start_anvil(day_start_ts(START) - 3600, accounts=40)
    try:
        report = seed_chain(node.url, START, end, accounts=40, blocks_per_day=blocks_per_day,
                            mean_txs_per_day=txs_per_day, seed=5, finality_blocks=FINALITY)
        state = rpc_post(node.url, "anvil_dumpState", [])
    finally:
        node.stop()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.decompress(bytes.fromhex(state.removeprefix("0x"))))
    meta = {"days": days, "blocks_per_day": blocks_per_day, "txs_per_day": txs_per_day, "start": START.isoformat(),
            "end": end.isoformat(), "seeded_blocks": report.blocks, "seeded_transactions": report.transactions,
            "seed_seconds": report.seconds}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def start_loaded_anvil(state: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(find_anvil()), "--host", "127.0.0.1", "--port", str(port), "--load-state", str(state),
                             "--no-mining", "--chain-id", str(CHAIN_ID), "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            rpc_post(url, "eth_chainId", [])
            return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("anvil did not load the state within 120 s")


def run_ours(url: str, days: list[date], receipts: bool, blocks_per_batch: int, in_flight: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        s = load_settings(storage={"data_dir": Path(tmp)},
                          rpc={"url": url, "requests_per_second": 1e9, "receipts": receipts,
                               "blocks_per_batch": blocks_per_batch, "finality_blocks": FINALITY,
                               "max_concurrent_requests": in_flight})
        ws = Workspace(s.storage.data_dir)
        t0 = time.perf_counter()
        rpc = HttpJsonRpc.from_settings(s.rpc)
        clock = BlockClock(rpc, ws.block_ranges_cache(s.rpc.chain))
        chain_id = int(rpc.call("eth_chainId", []), 16)
        latest = clock.latest()
        config = ChainJobConfig.from_settings(s.rpc, chain_id)
        with stream_for_days(rpc, ws.lake, clock, days, latest, config) as shared:  # as the ingest-chain flow does
            reports = [ingest_chain_day(rpc, ws.lake, clock, d, config, latest=latest, stream=shared) for d in days]
        seconds = time.perf_counter() - t0
        assert all(r.status == "done" for r in reports), [r.status for r in reports]
        lake = Lake(ws.lake.root)
        txs = lake.scan("transactions").select(pl.len()).collect().item()
        blocks = sum(r.blocks for r in reports)
        return {"seconds": seconds, "transactions": txs, "blocks": blocks, "tx_per_s": txs / seconds,
                "first_block": reports[0].first_block, "last_block": reports[-1].last_block,
                "requests": rpc.stats["requests"], "credits": rpc.stats["credits"], "retries": rpc.stats["retries"],
                "calls": rpc.stats["calls"], "range_calls": rpc.stats["calls"] - blocks * (2 if receipts else 1)}


def run_cryo(url: str, first: int, last: int) -> dict:
    import cryo._cryo_rust as cr

    with tempfile.TemporaryDirectory(prefix="bench-cryo-") as tmp:
        async def freeze():  # the extension needs a running loop when called
            return await cr._freeze(["transactions"], blocks=[f"{first}:{last + 1}"], rpc=url, output_dir=tmp,
                                    no_verbose=True, no_report=True)

        t0 = time.perf_counter()
        asyncio.run(freeze())
        seconds = time.perf_counter() - t0
        files = list(Path(tmp).rglob("*.parquet"))
        txs = pl.scan_parquet(files).select(pl.len()).collect().item() if files else 0
    return {"seconds": seconds, "transactions": txs, "tx_per_s": txs / seconds}


BEGIN, END = "<!-- bench_chain_ingest.py: begin -->", "<!-- bench_chain_ingest.py: end -->"


def write_report(out: Path, report: str) -> None:
    """Write the report to ``out``. When ``out`` already holds the markers, only the part between them
    is replaced: the notes written below a results file's table survive a rerun."""
    block = f"{BEGIN}\n{report}{END}\n"
    old = out.read_text() if out.is_file() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        block = head + block + rest.split(END, 1)[1].lstrip("\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(block)


def node_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) the node process has used so far; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=5)
    ap.add_argument("--blocks-per-day", type=int, default=500)
    ap.add_argument("--txs-per-day", type=int, default=10_000)
    rpc_defaults = load_settings().rpc
    ap.add_argument("--blocks-per-batch", type=int, default=rpc_defaults.blocks_per_batch, help="rpc.blocks_per_batch")
    ap.add_argument("--in-flight", type=int, default=rpc_defaults.max_concurrent_requests, help="rpc.max_concurrent_requests")
    ap.add_argument("--repeats", type=int, default=3, help="best of N for each contender (a multiple of 3 rotates evenly)")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds of quiet before each run")
    ap.add_argument("--state", type=Path, default=REPO / "var" / "bench" / "chain_ingest_state.json")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "chain_ingest.md")
    args = ap.parse_args()

    meta = ensure_state(args.state, args.days, args.blocks_per_day, args.txs_per_day)
    days = [START + timedelta(days=i) for i in range(args.days)]
    proc, url = start_loaded_anvil(args.state)
    try:
        results: dict[str, dict] = {}
        every: dict[str, list[float]] = {}
        cpu: dict[str, list[tuple[float, float | None]]] = {}  # per run: (this process's CPU-s, the node's CPU-s)
        contenders = [("ours, receipts off", lambda: run_ours(url, days, False, args.blocks_per_batch, args.in_flight)),
                      ("ours, receipts on", lambda: run_ours(url, days, True, args.blocks_per_batch, args.in_flight)),
                      ("cryo transactions (receipts)", lambda: run_cryo(url, results["ours, receipts off"]["first_block"],
                                                                         results["ours, receipts off"]["last_block"]))]
        for i in range(args.repeats):  # interleaved, best of N: the machine is shared
            # the order rotates every round, so that no contender always follows the same one (anvil's
            # state after a run, e.g. its allocator, must not favour whoever comes next)
            for name, fn in contenders[i % 3:] + contenders[:i % 3]:
                time.sleep(args.pause)
                cpu0, node0 = time.process_time(), node_cpu_s(proc.pid)
                r = fn()
                node1 = node_cpu_s(proc.pid)
                cpu.setdefault(name, []).append((time.process_time() - cpu0,
                                                 node1 - node0 if node0 is not None and node1 is not None else None))
                every.setdefault(name, []).append(r["seconds"])
                if name not in results or r["seconds"] < results[name]["seconds"]:
                    results[name] = r
                print(f"{name:30s} {r['transactions']:7d} txs in {r['seconds']:6.2f} s = {r['tx_per_s']:8.0f} tx/s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    off, on, cryo = results["ours, receipts off"], results["ours, receipts on"], results["cryo transactions (receipts)"]
    assert off["transactions"] == on["transactions"] == cryo["transactions"], "contenders disagree on the rows"
    ratio_on = on["tx_per_s"] / cryo["tx_per_s"]
    rounds = [c / o for o, c in zip(every["ours, receipts on"], every["cryo transactions (receipts)"], strict=True)]  # paired: same round
    ratio_off = off["tx_per_s"] / cryo["tx_per_s"]
    lines = [
        "# Chain ingest benchmark: chainsignal vs cryo",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, shared with other work; "
        f"Python {platform.python_version()}; anvil from `node_modules`; cryo 0.3.2 (Rust extension).",
        f"Chain: fixed synthetic anvil state ({meta['days']} days x {meta['blocks_per_day']} blocks, "
        f"{off['blocks']:,} blocks and {off['transactions']:,} transactions ingested, blocks {off['first_block']}..{off['last_block']}), "
        "loaded from `var/bench/chain_ingest_state.json`.",
        f"Best of {args.repeats} interleaved runs each (order rotated every round, {args.pause} s pause before each run); "
        f"ours unpaced, `rpc.blocks_per_batch = {args.blocks_per_batch}`, "
        f"`rpc.max_concurrent_requests = {args.in_flight}`; cryo with its defaults.",
        "",
        "| contender | transactions | seconds | tx/s | vs cryo |",
        "|---|---:|---:|---:|---:|",
        f"| chainsignal, receipts on (like for like) | {on['transactions']:,} | {on['seconds']:.2f} | {on['tx_per_s']:,.0f} "
        f"| **{ratio_on:.2f}x** |",
        f"| chainsignal, receipts off | {off['transactions']:,} | {off['seconds']:.2f} | {off['tx_per_s']:,.0f} | {ratio_off:.2f}x |",
        f"| cryo `transactions` (fetches receipts) | {cryo['transactions']:,} | {cryo['seconds']:.2f} | {cryo['tx_per_s']:,.0f} | 1.00x |",
        "",
        "Medians of the same runs: " + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in every.items())
        + "; ratio on medians: receipts on "
        f"{statistics.median(every['cryo transactions (receipts)']) / statistics.median(every['ours, receipts on']):.2f}x, "
        f"receipts off {statistics.median(every['cryo transactions (receipts)']) / statistics.median(every['ours, receipts off']):.2f}x. "
        "Per round (ours on / cryo, same round): "
        + ", ".join(f"{r:.2f}x" for r in rounds) + f"; their median {statistics.median(rounds):.2f}x, "
        f"{sum(r >= 1 for r in rounds)} of {len(rounds)} rounds >= 1.00x.",
        "",
        "CPU per run (medians; cryo runs in this process, through its Rust extension): "
        + ", ".join(f"{k} {statistics.median(c for c, _ in v):.2f} CPU-s" + (
            f" + anvil {statistics.median(n for _, n in v):.2f}" if all(n is not None for _, n in v) else "")
            for k, v in cpu.items()) + f", on {os.cpu_count()} CPUs.",
        "",
        "## Requests and credits (Infura costs: 80 per eth_getBlockByNumber / eth_chainId, 1,000 per eth_getBlockReceipts)",
        "",
        "| run | requests | calls | credits | credits per block | range-search and set-up calls per day |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("receipts off", off), ("receipts on", on)):
        lines.append(f"| {name} | {r['requests']:,} | {r['calls']:,} | {r['credits']:,} | {r['credits'] / r['blocks']:.1f} | "
                     f"{r['range_calls'] / args.days:.1f} |")
    # Extrapolation: per block the floor (one eth_getBlockByNumber, + one eth_getBlockReceipts), plus
    # the day's set-up and range-search calls. The interpolation search's probes do not grow with the
    # chain's length on regular block times, so the count measured here carries over; plain
    # bisection over ~21M mainnet blocks (~25 probes) is shown as the upper bound.
    per_day_here = off["range_calls"] / args.days
    lines.append("")
    for name, per_block in (("receipts off", 80), ("receipts on", 1080)):
        for label, overhead in (("measured", per_day_here), ("bisection bound", 25 + 2)):
            day = MAINNET_BLOCKS_PER_DAY * per_block + overhead * 80
            share = day / FREE_DAILY_CREDITS
            fits = " (fits the free tier)" if share <= 1 else " (does **not** fit one free-tier day)"
            lines.append(f"- **{name}**, {label}: 7,200 x {per_block} + {overhead:.1f} set-up/range calls x 80 "
                         f"= **{day:,.0f} credits = {share:.2%}** of 3,000,000; at 500 credits/s "
                         f"{day / FREE_CREDITS_PER_S / 60:.1f} min{fits}")
    lines += [
        "",
        f"Measured here: {per_day_here:.1f} set-up and range calls per day on a {meta['blocks_per_day']}-block day "
        "(the previous day's end is cached, so each day costs one search for its end); retries "
        f"{off['retries']} / {on['retries']}. Under `rpc.credits_per_second = 500` the client caps a batch at 6 blocks "
        "(480 credits), i.e. 1,200 requests for a mainnet day.",
        "",
        f"Command: `.venv/bin/python bench/bench_chain_ingest.py --days {args.days} --blocks-per-day {args.blocks_per_day} "
        f"--txs-per-day {args.txs_per_day} --blocks-per-batch {args.blocks_per_batch} --in-flight {args.in_flight} "
        f"--repeats {args.repeats} --pause {args.pause}`",
    ]
    write_report(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nratio (receipts on) ours/cryo = {ratio_on:.2f}x; receipts off = {ratio_off:.2f}x")


if __name__ == "__main__":
    main()
