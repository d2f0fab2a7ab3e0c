"""Daily features -> labelled, chronologically split Alpaca records and a versioned DatasetDict.

Labels: the target's next-day return mapped to NEGATIVE / NEUTRAL / POSITIVE with a dead band
whose thresholds come from the *training* split's quantiles (so train is balanced and nothing
from validation/test leaks into them), unless fixed in settings.
Splits: train | embargo | validation | embargo | test, in time order, no day in two splits;
the newest day, whose label is not known yet, goes to the ``predict`` split.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from tasks.prompter import Prompter
from tasks.schemas import LABELS

SPLITS = ("train", "validation", "test")
NUMERIC_EXCLUDE = {"date", "next_day_return", "label", "split", "top_posts"}


@dataclass(frozen=True)
class SplitPlan:
    train: tuple[date, date]
    validation: tuple[date, date]
    test: tuple[date, date]
    embargo_days: int


def plan_splits(days: list[date], validation_fraction: float, test_fraction: float, embargo_days: int) -> SplitPlan:
    """Chronological split of labelled days with ``embargo_days`` dropped before val and test."""
    days = sorted(days)
    n = len(days)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * validation_fraction))
    n_train = n - n_test - n_val - 2 * embargo_days
    if n_train < 3:
        raise ValueError(f"only {n} labelled days: too few for train/validation/test with an embargo of {embargo_days}")
    test = days[n - n_test:]
    val = days[n - n_test - embargo_days - n_val: n - n_test - embargo_days]
    train = days[:n_train]
    return SplitPlan((train[0], train[-1]), (val[0], val[-1]), (test[0], test[-1]), embargo_days)


def assign_split(frame: pl.LazyFrame, plan: SplitPlan) -> pl.LazyFrame:
    d = pl.col("date")
    return frame.with_columns(
        pl.when(pl.col("next_day_return").is_null()).then(pl.lit("predict"))
        .when(d.is_between(*plan.train)).then(pl.lit("train"))
        .when(d.is_between(*plan.validation)).then(pl.lit("validation"))
        .when(d.is_between(*plan.test)).then(pl.lit("test"))
        .otherwise(pl.lit(None, pl.String))
        .alias("split")
    )


def label_thresholds(train_returns: pl.Series, quantiles: tuple[float, float],
                     fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return float(fixed[0]), float(fixed[1])
    return float(train_returns.quantile(quantiles[0])), float(train_returns.quantile(quantiles[1]))


def label_from_return(ret: pl.Expr, neg_below: float, pos_above: float) -> pl.Expr:
    return (
        pl.when(ret.is_null()).then(pl.lit(None, pl.String))
        .when(ret > pos_above).then(pl.lit("POSITIVE"))
        .when(ret < neg_below).then(pl.lit("NEGATIVE"))
        .otherwise(pl.lit("NEUTRAL"))
    )


def add_persistence(frame: pl.DataFrame) -> pl.DataFrame:
    """Today's realized move (the label of yesterday's row, known at decision time), when contiguous."""
    prev_date = pl.col("date").shift(1)
    return frame.sort("date").with_columns(
        pl.when((pl.col("date") - prev_date) == pl.duration(days=1))
        .then(pl.col("label").shift(1)).otherwise(None).alias("today_label")
    )


# ----------------------------------------------------------------------------- rendering
def _fmt(value: Any, kind: str = "num") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if kind == "pct":
        return f"{value * 100:+.1f}%"
    if kind == "share":
        return f"{value * 100:.0f}%"
    if kind == "int":
        return f"{int(value)}"
    if kind == "sent":
        return f"{value:+.2f}"
    return f"{value:,.2f}" if abs(value) < 1e6 else f"{value:,.0f}"


def render_input(row: dict[str, Any], assets: list[str], chain_label: str) -> str:
    """The day's features as compact, readable text (missing values say n/a, never 0)."""
    lines = [f"date: {row['date']} ({row['date'].strftime('%a')})"]
    for a in (x.lower() for x in assets):
        lines.append(
            f"{a.upper()}: close {_fmt(row.get(f'{a}_close_usd'))} USD, 1d {_fmt(row.get(f'{a}_ret_1d'), 'pct')}, "
            f"3d {_fmt(row.get(f'{a}_ret_3d'), 'pct')}, 7d {_fmt(row.get(f'{a}_ret_7d'), 'pct')}, "
            f"vol7d {_fmt(row.get(f'{a}_vol_7d'), 'pct')}, volume {_fmt(row.get(f'{a}_volume_change_1d'), 'pct')}"
        )
    if row.get("tx_count") is None:
        lines.append(f"chain ({chain_label}): n/a")
    else:
        lines.append(
            f"chain ({chain_label}): {_fmt(row['tx_count'], 'int')} txs, {_fmt(row.get('unique_senders'), 'int')} senders, "
            f"{_fmt(row.get('unique_receivers'), 'int')} receivers, {_fmt(row.get('new_addresses'), 'int')} new addresses, "
            f"value {_fmt(row.get('value_eth_total'))} ETH (median {_fmt(row.get('value_eth_median'))}), "
            f"EIP-1559 {_fmt(row.get('eip1559_share'), 'share')}, {_fmt(row.get('contract_creations'), 'int')} contract creations, "
            f"gas p50 {_fmt(row.get('gas_price_gwei_p50'))} gwei p90 {_fmt(row.get('gas_price_gwei_p90'))}, "
            f"top-10 senders {_fmt(row.get('top10_sender_share'), 'share')}"
        )
    if row.get("post_count") is None:
        lines.append("social: n/a")
    elif row["post_count"] == 0:
        lines.append("social: no posts")
    else:
        lines.append(
            f"social: {_fmt(row['post_count'], 'int')} posts by {_fmt(row.get('unique_authors'), 'int')} authors, "
            f"sentiment {_fmt(row.get('sentiment_mean'), 'sent')}, authors positive "
            f"{_fmt(row.get('author_positive_share'), 'share')} negative {_fmt(row.get('author_negative_share'), 'share')}"
        )
        for text in row.get("top_posts") or []:
            lines.append(f'post: "{" ".join(text.split())[:160]}"')
    return "\n".join(lines)


def build_records(frame: pl.DataFrame, prompter: Prompter, assets: list[str], chain_label: str) -> list[dict[str, Any]]:
    return [
        {
            "date": row["date"].isoformat(),
            "split": row["split"],
            "instruction": prompter.instruction,
            "input": render_input(row, assets, chain_label),
            "output": row["label"] or "",
        }
        for row in frame.iter_rows(named=True)
    ]


def fingerprint(records: list[dict[str, Any]], settings_hash: str) -> str:
    h = hashlib.sha256(settings_hash.encode())
    for r in records:
        h.update(json.dumps(r, sort_keys=True).encode())
    return h.hexdigest()[:16]


def numeric_feature_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c, t in frame.schema.items() if c not in NUMERIC_EXCLUDE and t.is_numeric() and c != "today_label"]


def write_dataset(out_dir: Path, frame: pl.DataFrame, records: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
    """Alpaca JSON per split, the feature table, a HF DatasetDict and the manifest (written last)."""
    import datasets

    from tasks.storage import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_split.setdefault(r["split"], []).append(r)
    for split, rows in by_split.items():
        write_json(out_dir / f"{split}.json", rows)
    frame.write_parquet(out_dir / "features.parquet")
    features = datasets.Features({k: datasets.Value("string") for k in ("date", "split", "instruction", "input", "output")})
    dd = datasets.DatasetDict({
        split: datasets.Dataset.from_list(rows, features=features) for split, rows in by_split.items()
    })
    dd.save_to_disk(str(out_dir / "hf"))
    write_json(out_dir / "manifest.json", manifest)


def label_counts(frame: pl.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        sub = frame.filter(pl.col("split") == split)
        out[split] = {lab: int((sub["label"] == lab).sum()) for lab in LABELS}
    return out


# ----------------------------------------------------------------------------- the build task
def describe_chain(lake, start: date, end: date) -> str:
    """How the chain data is described in records and tags (the demo's local chain is synthetic)."""
    from tasks.chain.localnode import CHAIN_ID as LOCAL_CHAIN_ID

    ids = {(lake.manifest("transactions", d) or {}).get("chain_id")
           for d in lake.completed_days("transactions") if start <= d <= end} - {None}
    if not ids:
        return "no chain data"
    if LOCAL_CHAIN_ID in ids:
        return "synthetic local chain"
    return "chain id " + ",".join(str(i) for i in sorted(ids))


def build_direction_dataset(lake, out_root: Path, pointer: Path, *, dataset_settings, assets: list[str],
                            settings_hash: str, settings_public: dict[str, Any]) -> dict[str, Any]:
    """Read the lake, build features, labels, splits and records; write a versioned dataset.

    Returns the manifest. Idempotent: the same inputs and settings give the same fingerprint, and
    an existing dataset with that fingerprint is not rewritten.
    """
    from tasks.features import daily_features

    ds = dataset_settings
    price_days = lake.completed_days("prices")
    if not price_days:
        raise ValueError("no price partitions in the lake: run `chainsignal ingest` first")
    start = ds.start_date or price_days[0]
    end = ds.end_date or price_days[-1]
    history_start = start.replace(year=start.year - 1)  # new-address history: up to a year back
    features = daily_features(
        lake.scan("prices", start, end),
        lake.scan("transactions", history_start, end),
        lake.scan("sentiment", start, end),
        lake.scan("posts", start, end),
        start=start, end=end, assets=assets, target=ds.target_asset,
        chain_days=[d for d in lake.completed_days("transactions") if start <= d <= end],
        social_days=[d for d in lake.completed_days("posts") if start <= d <= end],
        top_posts=ds.top_posts,
    ).collect()
    chain_label = describe_chain(lake, start, end)
    labelled_days = features.filter(pl.col("next_day_return").is_not_null())["date"].to_list()
    plan = plan_splits(labelled_days, ds.validation_fraction, ds.test_fraction, ds.embargo_days)
    frame = assign_split(features.lazy(), plan).collect()
    neg, pos = label_thresholds(frame.filter(pl.col("split") == "train")["next_day_return"],
                                ds.label_quantiles, ds.fixed_thresholds)
    frame = (
        frame.with_columns(label_from_return(pl.col("next_day_return"), neg, pos).alias("label"))
        .pipe(add_persistence)
        .filter(pl.col("split").is_not_null())  # drops the embargo days
    )
    prompter = Prompter.load()
    records = build_records(frame, prompter, assets, chain_label)
    fp = fingerprint(records, settings_hash)
    out_dir = out_root / fp
    manifest = {
        "fingerprint": fp,
        "task": ds.name,
        "target_asset": ds.target_asset,
        "start": start.isoformat(), "end": end.isoformat(),
        "splits": {k: [v[0].isoformat(), v[1].isoformat()] for k, v in
                   {"train": plan.train, "validation": plan.validation, "test": plan.test}.items()},
        "embargo_days": plan.embargo_days,
        "thresholds": {"negative_below": neg, "positive_above": pos},
        "rows": {s: int((frame["split"] == s).sum()) for s in (*SPLITS, "predict")},
        "label_counts": label_counts(frame),
        "inputs": {name: len(lake.partition_files(name, start, end)) for name in ("prices", "transactions", "posts", "sentiment")},
        "chain_label": chain_label,
        "numeric_features": numeric_feature_columns(frame),
        "settings": settings_public,
        "path": str(out_dir),
    }
    if not (out_dir / "manifest.json").is_file():
        write_dataset(out_dir, frame, records, manifest)

    from tasks.storage import write_bytes_atomic

    write_bytes_atomic(pointer, (fp + "\n").encode())
    return manifest
