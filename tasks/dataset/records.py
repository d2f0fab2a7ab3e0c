"""Alpaca records (instruction, input, output) per task, their fingerprint, and the files of a
dataset version: JSON per split, the feature table, a HF DatasetDict and the manifest."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import polars as pl

from tasks.core.manifests import DatasetManifest
from tasks.core.storage import DatasetVersion, write_json
from tasks.dataset.frames import DailyFrame
from tasks.dataset.labels import format_return_pct
from tasks.dataset.prompter import Prompter


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
    lines = [f"weekday: {row['date'].strftime('%a')}"]
    # Returns, volatilities and ratios only: a price level, a count or the calendar date never reaches the
    # prompt (a level or a year the model never saw in training would be out of distribution at test time:
    # on the shared split the tiny model put one label on every 2024 day); the weekday cycles, so it stays.
    # "vs 7d" is the log ratio of the day's value to its mean over the 7 days before, in percent.
    def vs(name: str) -> str:
        return _fmt(row.get(f"{name}_vs_7d"), "pct")

    for a in (x.lower() for x in assets):
        lines.append(
            f"{a.upper()}: 1d {_fmt(row.get(f'{a}_ret_1d'), 'pct')}, 3d {_fmt(row.get(f'{a}_ret_3d'), 'pct')}, "
            f"7d {_fmt(row.get(f'{a}_ret_7d'), 'pct')}, vol7d {_fmt(row.get(f'{a}_vol_7d'), 'pct')}, "
            f"vs 30d mean {_fmt(row.get(f'{a}_close_vs_30d'), 'pct')}, volume {_fmt(row.get(f'{a}_volume_change_1d'), 'pct')}"
        )
    if row.get("tx_count") is None:
        lines.append(f"chain ({chain_label}): n/a")
    else:
        lines.append(
            f"chain ({chain_label}) vs 7d: txs {vs('tx_count')}, senders {vs('unique_senders')}, "
            f"receivers {vs('unique_receivers')}, new addresses {vs('new_addresses')}, value {vs('value_eth_total')} "
            f"(median {vs('value_eth_median')}), gas p50 {vs('gas_price_gwei_p50')} p90 {vs('gas_price_gwei_p90')}; "
            f"EIP-1559 {_fmt(row.get('eip1559_share'), 'share')}, top-10 senders {_fmt(row.get('top10_sender_share'), 'share')}"
        )
    if row.get("post_count") is None:
        lines.append("social: n/a")
    elif row["post_count"] == 0:
        lines.append("social: no posts")
    else:
        lines.append(
            f"social: posts {vs('post_count')} vs 7d, authors {vs('unique_authors')}, "
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


def direction_records(base: DailyFrame, prompter: Prompter, assets: list[str], task: str) -> list[dict[str, Any]]:
    """One record per day: the day's features as text -> its label (direction) or next-day return in % (return)."""
    instruction = prompter.instruction_for(task)
    frame = base.frame
    if task == "return":
        frame = frame.with_columns(
            pl.col("next_day_return").map_elements(format_return_pct, return_dtype=pl.String).fill_null("").alias("label")
        )
    records = build_records(frame, prompter, assets, base.chain_label)
    for r in records:
        r["instruction"] = instruction
    return records


def sentiment_records(frame: pl.DataFrame, prompter: Prompter) -> list[dict[str, Any]]:
    instruction = prompter.instruction_for("sentiment")
    return [{"date": d.isoformat(), "split": sp, "instruction": instruction,
             "input": " ".join((t or "").split())[:400], "output": lab}
            for d, sp, t, lab in frame.select("date", "split", "text", "label").iter_rows()]


def tx_value_records(frame: pl.DataFrame, prompter: Prompter, window: int) -> list[dict[str, Any]]:
    instruction = prompter.instruction_for("tx-value")
    cols = [f"tx_{k}" for k in range(window, 0, -1)]
    return [{"date": row["date"].isoformat(), "split": row["split"], "instruction": instruction,
             "input": "\n".join(row[c] for c in cols), "output": f"{row['target']:.3f}"}
            for row in frame.iter_rows(named=True)]


def fingerprint(records: list[dict[str, Any]], settings_hash: str) -> str:
    h = hashlib.sha256(settings_hash.encode())
    for r in records:
        h.update(json.dumps(r, sort_keys=True).encode())
    return h.hexdigest()[:16]


def write_dataset(version: DatasetVersion, frame: pl.DataFrame, records: list[dict[str, Any]],
                  manifest: DatasetManifest) -> None:
    """Alpaca JSON per split, the feature table, a HF DatasetDict and the manifest (written last)."""
    import datasets

    version.dir.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_split.setdefault(r["split"], []).append(r)
    for split, rows in by_split.items():
        write_json(version.records_path(split), rows)
    frame.write_parquet(version.features_path)
    features = datasets.Features({k: datasets.Value("string") for k in ("date", "split", "instruction", "input", "output")})
    dd = datasets.DatasetDict({
        split: datasets.Dataset.from_list(rows, features=features) for split, rows in by_split.items()
    })
    dd.save_to_disk(str(version.hf_dir))
    write_json(version.manifest_path, manifest.to_dict())
