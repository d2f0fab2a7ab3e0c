"""Benchmark: daily chain features at mainnet scale, polars (chainsignal) vs a straightforward pandas peer.

Not a test. SYNTHETIC data: mainnet-shaped days (1.2M transactions each, addresses drawn from a
heavy-tailed pool) are generated under a scratch folder once and reused. Every variant runs in
its own subprocess so its peak memory (max RSS) is its own. Printed as ratios against the peer
measured in the same run:

  full      rebuild N days of daily activity + 365-day new addresses from parquet
            (chainsignal: lazy scan + streaming engine; peer: pandas, one day at a time with a
            running last-seen dict, the way one would write it by hand)
  incr      one new day against a 365-day address state (chainsignal: AddressState.update;
            peer: pandas merge on the same state)
  windows   tx-value windows of N=32 for one day (chainsignal: tasks.dataset.frames.tx_value_windows;
            peer: pandas shift/format)
  authors   per-author mean sentiment for 200k posts (chainsignal: polars group_by as in
            tasks.dataset.features.social_features; peer: the original study's Python row loop)

Usage:  .venv/bin/python bench/bench_features.py [--days 30] [--txs-per-day 1200000] [--out bench/results/features.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
D0 = date(2024, 1, 1)


# ----------------------------------------------------------------------------- data (synthetic)
def generate(scratch: Path, days: int, txs_per_day: int, pool: int = 20_000_000, seed: int = 1) -> Path:
    import numpy as np
    import polars as pl

    lake = scratch / f"lake_{days}x{txs_per_day}"
    marker = lake / "_done.json"
    if marker.is_file():
        return lake
    rng = np.random.default_rng(seed)
    block = 19_000_000
    for d in range(days):
        day = D0 + timedelta(days=d)
        n = txs_per_day
        # Heavy-tailed activity: a few addresses do most transactions (Zipf-like ranks).
        senders = (rng.pareto(1.1, n) * 1000).astype(np.int64) % pool
        receivers = (rng.pareto(0.9, n) * 1000 + rng.integers(0, pool, n) * (rng.random(n) < 0.3)).astype(np.int64) % pool
        ts = np.sort(rng.integers(0, 86_400, n)) + int((day - date(1970, 1, 1)).days) * 86_400
        blocks = block + (ts - ts.min()) // 12
        block = int(blocks.max()) + 1
        frame = pl.DataFrame({
            "block_number": blocks, "transaction_index": np.arange(n, dtype=np.int32),
            "block_timestamp": pl.Series(ts * 1_000_000).cast(pl.Datetime("us", "UTC")),
            "from_id": senders, "to_id": receivers,
            "value_eth": np.round(np.exp(rng.normal(-2, 2.5, n)) * (rng.random(n) < 0.6), 6),
            "transaction_type": np.where(rng.random(n) < 0.8, 2, 0).astype(np.int32),
            "gas_price_wei": (rng.gamma(2.0, 10.0, n) * 1e9).astype(np.int64),
            "create": rng.random(n) < 0.005,
        }).select(
            "block_number", "transaction_index", "block_timestamp",
            pl.format("0x{}", pl.col("from_id").cast(pl.String).str.zfill(40)).alias("from_address"),
            pl.when(pl.col("create")).then(None)
            .otherwise(pl.format("0x{}", pl.col("to_id").cast(pl.String).str.zfill(40))).alias("to_address"),
            "value_eth", "transaction_type", "gas_price_wei",
        )
        out = lake / f"date={day.isoformat()}"
        out.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(out / "synthetic__transactions.parquet", statistics=True)
    marker.write_text(json.dumps({"days": days, "txs_per_day": txs_per_day, "synthetic": True}))
    return lake


def day_files(lake: Path, days: int) -> list[Path]:
    return [lake / f"date={(D0 + timedelta(days=d)).isoformat()}" / "synthetic__transactions.parquet" for d in range(days)]


# ----------------------------------------------------------------------------- variants (run in children)
def full_polars(lake: Path, days: int) -> dict:
    import polars as pl

    from tasks.dataset.features import chain_daily_activity, chain_new_addresses

    txs = pl.scan_parquet(day_files(lake, days))
    activity = chain_daily_activity(txs).collect(engine="streaming")
    new = chain_new_addresses(txs, 365).collect(engine="streaming")
    return {"rows": activity.height, "new_addresses": int(new["new_addresses"].sum())}


def full_pandas(lake: Path, days: int) -> dict:
    import pandas as pd

    last_seen: dict[str, int] = {}
    rows, new_total = 0, 0
    for d, path in enumerate(day_files(lake, days)):
        df = pd.read_parquet(path, columns=["from_address", "to_address", "value_eth", "transaction_type", "gas_price_wei"])
        _ = {
            "tx_count": len(df), "unique_senders": df["from_address"].nunique(),
            "unique_receivers": df["to_address"].dropna().nunique(), "value_eth_total": df["value_eth"].sum(),
            "value_eth_median": df["value_eth"].median(), "eip1559_share": (df["transaction_type"] == 2).mean(),
            "contract_creations": int(df["to_address"].isna().sum()),
            "gas_p50": df["gas_price_wei"].quantile(0.5), "gas_p90": df["gas_price_wei"].quantile(0.9),
            "top10": df["from_address"].value_counts().head(10).sum() / len(df),
        }
        addresses = pd.unique(pd.concat([df["from_address"], df["to_address"].dropna()]))
        new = 0
        for a in addresses:
            prev = last_seen.get(a)
            if prev is None or d - prev > 365:
                new += 1
            last_seen[a] = d
        new_total += new
        rows += 1
    return {"rows": rows, "new_addresses": new_total}


def _state(lake: Path, history_days: int):
    """A 365-day address state (address, last_seen) built from the history days (setup, not timed)."""
    import polars as pl

    from tasks.dataset.features import AddressState

    txs = pl.scan_parquet(day_files(lake, history_days))
    return AddressState.from_history(txs, lookback_days=365)


def incr_polars(lake: Path, days: int) -> dict:
    import polars as pl

    from tasks.dataset.features import chain_daily_activity

    state = _state(lake, days - 1)
    t0 = time.perf_counter()
    new_day = pl.scan_parquet(day_files(lake, days)[-1])
    activity = chain_daily_activity(new_day).collect()
    state, new = state.update(new_day)
    return {"seconds_timed": time.perf_counter() - t0, "tx_count": int(activity["tx_count"][0]), "new_addresses": new,
            "state_addresses": state.size}


def incr_pandas(lake: Path, days: int) -> dict:
    import pandas as pd

    st = _state(lake, days - 1).frame.to_pandas()
    t0 = time.perf_counter()
    day = D0 + timedelta(days=days - 1)
    df = pd.read_parquet(day_files(lake, days)[-1])
    _ = df.groupby(df["block_timestamp"].dt.date).agg(tx_count=("from_address", "size"), senders=("from_address", "nunique"),
                                                       value=("value_eth", "sum"), median=("value_eth", "median"))
    seen = pd.DataFrame({"address": pd.unique(pd.concat([df["from_address"], df["to_address"].dropna()]))})
    merged = seen.merge(st, on="address", how="left")
    cutoff = pd.Timestamp(day - timedelta(days=365))
    new = int((merged["last_seen"].isna() | (pd.to_datetime(merged["last_seen"]) < cutoff)).sum())
    st = pd.concat([st[~st["address"].isin(seen["address"])], seen.assign(last_seen=day)])
    return {"seconds_timed": time.perf_counter() - t0, "tx_count": len(df), "new_addresses": new, "state_addresses": len(st)}


def windows_polars(lake: Path, days: int) -> dict:
    import polars as pl

    from tasks.dataset.features import frequent_addresses
    from tasks.dataset.frames import tx_value_windows

    txs = pl.scan_parquet(day_files(lake, days)[-1])
    vocab = frequent_addresses(txs, D0, D0 + timedelta(days=days), 10).collect().lazy()
    t0 = time.perf_counter()
    out = tx_value_windows(txs, vocab, 32, 1.0).collect()
    return {"seconds_timed": time.perf_counter() - t0, "windows": out.height}


def windows_pandas(lake: Path, days: int) -> dict:
    import numpy as np
    import pandas as pd
    import polars as pl

    from tasks.dataset.features import frequent_addresses

    txs = pl.scan_parquet(day_files(lake, days)[-1])
    vocab = set(frequent_addresses(txs, D0, D0 + timedelta(days=days), 10).collect()["address"].to_list())
    df = pd.read_parquet(day_files(lake, days)[-1]).sort_values(["block_number", "transaction_index"])
    t0 = time.perf_counter()
    f = df["from_address"].where(df["from_address"].isin(vocab), "unknown")
    t = df["to_address"].where(df["to_address"].isin(vocab), "unknown").where(df["to_address"].notna(), "create")
    dt = df["block_timestamp"].diff().dt.total_seconds().fillna(0).astype(int).astype(str)
    line = f + " > " + t + " " + df["value_eth"].round(4).astype(str) + " ETH +" + dt + "s"
    cols = {f"tx_{k}": line.shift(k) for k in range(32, 0, -1)}
    out = pd.DataFrame({"target": np.log(df["value_eth"] + 1.0), **cols}).iloc[32:]
    return {"seconds_timed": time.perf_counter() - t0, "windows": len(out)}


def authors_data(n: int = 200_000, seed: int = 3):
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    return pl.DataFrame({"author_username": pl.Series((rng.pareto(1.2, n) * 50).astype(np.int64)).cast(pl.String),
                         "compound": rng.uniform(-1, 1, n)})


def authors_polars(lake: Path, days: int) -> dict:
    import polars as pl

    df = authors_data()
    t0 = time.perf_counter()
    out = df.lazy().group_by("author_username").agg(pl.col("compound").mean().alias("author_mean")).with_columns(
        pl.when(pl.col("author_mean") >= 0.05).then(pl.lit("POSITIVE")).when(pl.col("author_mean") <= -0.05)
        .then(pl.lit("NEGATIVE")).otherwise(pl.lit("NEUTRAL")).alias("label")).collect()
    return {"seconds_timed": time.perf_counter() - t0, "authors": out.height}


def authors_rowloop(lake: Path, days: int) -> dict:
    df = authors_data().to_pandas()
    t0 = time.perf_counter()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for _, row in df.iterrows():  # the original study's approach: a Python loop over rows
        sums[row["author_username"]] = sums.get(row["author_username"], 0.0) + row["compound"]
        counts[row["author_username"]] = counts.get(row["author_username"], 0) + 1
    labels = {a: ("POSITIVE" if s / counts[a] >= 0.05 else "NEGATIVE" if s / counts[a] <= -0.05 else "NEUTRAL")
              for a, s in sums.items()}
    return {"seconds_timed": time.perf_counter() - t0, "authors": len(labels)}


VARIANTS = {f.__name__: f for f in (full_polars, full_pandas, incr_polars, incr_pandas, windows_polars, windows_pandas,
                                    authors_polars, authors_rowloop)}


def child(name: str, lake: str, days: int) -> None:
    os.environ.setdefault("POLARS_MAX_THREADS", str(os.cpu_count() or 2))
    t0 = time.perf_counter()
    result = VARIANTS[name](Path(lake), days)
    result["seconds"] = result.pop("seconds_timed", time.perf_counter() - t0)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def run_variant(name: str, lake: Path, days: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", name, "--lake", str(lake), "--days", str(days)],
                          capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{name} failed: {proc.stderr.strip().splitlines()[-1:] }")
    return json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--txs-per-day", type=int, default=1_200_000)
    ap.add_argument("--scratch", default="/tmp/chainsignal-bench")
    ap.add_argument("--out", default=None, help="write a markdown results file here")
    ap.add_argument("--only", default="full,incr,windows,authors")
    ap.add_argument("--child")
    ap.add_argument("--lake")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.lake, args.days)
        return
    t0 = time.perf_counter()
    lake = generate(Path(args.scratch), args.days, args.txs_per_day)
    print(f"synthetic data: {args.days} days x {args.txs_per_day:,} txs at {lake} (generated/reused in {time.perf_counter() - t0:.0f}s)")
    goals = {"full": ("full rebuild", 60.0, 4096), "incr": ("incremental day", 2.0, None),
             "windows": ("tx-value windows (N=32, one day)", 10.0, None), "authors": ("per-author aggregation (200k posts)", None, None)}
    peers = {"full": "full_pandas", "incr": "incr_pandas", "windows": "windows_pandas", "authors": "authors_rowloop"}
    lines = ["| step | chainsignal (polars) | peer | peer name | speed-up | peak RSS ours / peer | goal |", "|---|---|---|---|---|---|---|"]
    for key in args.only.split(","):
        ours = run_variant(f"{key}_polars", lake, args.days)
        peer = run_variant(peers[key], lake, args.days)
        label, goal_s, goal_mb = goals[key]
        ratio = peer["seconds"] / ours["seconds"]
        ok = (goal_s is None or ours["seconds"] <= goal_s) and (goal_mb is None or ours["peak_rss_mb"] <= goal_mb)
        goal = " ".join(filter(None, [f"<= {goal_s:g} s" if goal_s else "", f"<= {goal_mb} MB" if goal_mb else ""])) or "-"
        print(f"{label}: ours {ours['seconds']:.2f}s ({ours['peak_rss_mb']:.0f} MB) vs {peers[key]} {peer['seconds']:.2f}s "
              f"({peer['peak_rss_mb']:.0f} MB) -> {ratio:.1f}x  goal {goal}: {'met' if ok else 'NOT met'}  {ours}")
        lines.append(f"| {label} | {ours['seconds']:.2f} s | {peer['seconds']:.2f} s | {peers[key]} | {ratio:.1f}x | "
                     f"{ours['peak_rss_mb']:.0f} / {peer['peak_rss_mb']:.0f} MB | {goal} ({'met' if ok else 'not met'}) |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            f"# Feature benchmark\n\n`{' '.join(sys.argv)}` on {os.cpu_count()} cores; synthetic mainnet-shaped data "
            f"({args.days} days x {args.txs_per_day:,} transactions).\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
