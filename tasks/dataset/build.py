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
from datetime import date, timedelta
from typing import Any

import polars as pl

from tasks.core.manifests import DatasetManifest
from tasks.core.schemas import LABELS
from tasks.core.storage import DatasetVersion, DatasetVersions, write_json
from tasks.dataset.prompter import Prompter

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
        pl.when(pl.col("next_day_return").is_null() & (d == d.max())).then(pl.lit("predict"))
        .when(pl.col("next_day_return").is_null()).then(pl.lit(None, pl.String))  # before a gap
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


def label_counts(frame: pl.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        sub = frame.filter(pl.col("split") == split)
        out[split] = {lab: int((sub["label"] == lab).sum()) for lab in LABELS}
    return out


# ----------------------------------------------------------------------------- the build task
TASKS = ("direction", "return", "sentiment", "tx-value")
CLASS_TASKS = ("direction", "sentiment")
NUMERIC_TASKS = ("return", "tx-value")


def format_return_pct(ret: float) -> str:
    return f"{ret * 100:+.2f}"


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


def sentiment_options(sentiment_settings) -> dict[str, Any]:
    if sentiment_settings is None:
        return {}
    return {"excluded_authors": tuple(sentiment_settings.excluded_authors), "min_posts": sentiment_settings.min_posts_per_author,
            "positive_at": sentiment_settings.positive_at, "negative_at": sentiment_settings.negative_at}


def daily_frame(lake, ds, assets: list[str], sentiment_settings=None) -> dict[str, Any]:
    """Features per day, the split plan, labels and thresholds: the base of every task."""
    from tasks.dataset.features import daily_features, frequent_addresses, known_address_activity

    price_days = lake.completed_days("prices")
    if not price_days:
        raise ValueError("no price partitions in the lake: run `chainsignal ingest` first")
    start = ds.start_date or price_days[0]
    end = ds.end_date or price_days[-1]
    history_start = start - timedelta(days=ds.new_address_lookback_days)
    txs = lake.scan("transactions", history_start, end)
    features = daily_features(
        lake.scan("prices", start, end), txs, lake.scan("sentiment", start, end), lake.scan("posts", start, end),
        start=start, end=end, assets=assets, target=ds.target_asset,
        chain_days=[d for d in lake.completed_days("transactions") if start <= d <= end],
        social_days=[d for d in lake.completed_days("posts") if start <= d <= end],
        top_posts=ds.top_posts, new_address_lookback_days=ds.new_address_lookback_days,
        sentiment_options=sentiment_options(sentiment_settings),
    ).collect()
    labelled_days = features.filter(pl.col("next_day_return").is_not_null())["date"].to_list()
    plan = plan_splits(labelled_days, ds.validation_fraction, ds.test_fraction, ds.embargo_days)
    # The thesis's address vocabulary, counted on the training window only (no test leakage).
    vocabulary = frequent_addresses(txs, plan.train[0], plan.train[1], ds.frequent_address_min_transactions)
    known = known_address_activity(lake.scan("transactions", start, end), vocabulary).collect()
    frame = assign_split(features.lazy(), plan).collect().join(known, on="date", how="left")
    neg, pos = label_thresholds(frame.filter(pl.col("split") == "train")["next_day_return"],
                                ds.label_quantiles, ds.fixed_thresholds)
    frame = (
        frame.with_columns(label_from_return(pl.col("next_day_return"), neg, pos).alias("label"))
        .pipe(add_persistence)
        .filter(pl.col("split").is_not_null())  # drops the embargo days and the days before a gap
    )
    return {"frame": frame, "plan": plan, "start": start, "end": end, "vocabulary": vocabulary,
            "thresholds": {"negative_below": neg, "positive_above": pos},
            "chain_label": describe_chain(lake, start, end)}


def direction_records(base: dict[str, Any], prompter: Prompter, assets: list[str], task: str) -> list[dict[str, Any]]:
    instruction = prompter.instruction_for(task)
    frame = base["frame"]
    if task == "return":
        frame = frame.with_columns(
            pl.col("next_day_return").map_elements(format_return_pct, return_dtype=pl.String).fill_null("").alias("label")
        )
    records = build_records(frame, prompter, assets, base["chain_label"])
    for r in records:
        r["instruction"] = instruction
    return records


def sentiment_frame(lake, base: dict[str, Any], sentiment_settings) -> pl.DataFrame:
    """The original study's task: a post's text -> its author's mean sentiment label.

    The author's mean is taken over the author's posts in the same split (so no split sees
    another's posts); the per-post VADER label is kept as the rule the task is measured against.
    """
    plan = base["plan"]
    posts = lake.scan("posts", base["start"], base["end"]).select("post_id", "source", "text")
    sent = lake.scan("sentiment", base["start"], base["end"])
    frame = (
        sent.join(posts, on=["post_id", "source"], how="inner")
        .with_columns(pl.col("created_at").dt.date().alias("date"))
        .pipe(lambda f: assign_split(f.with_columns(pl.lit(0.0).alias("next_day_return")), plan))
        .filter(pl.col("split").is_in(list(SPLITS)))
        .with_columns(pl.col("compound").mean().over("split", "author_username").alias("author_mean"))
        .with_columns(
            pl.when(pl.col("author_mean") >= sentiment_settings.positive_at).then(pl.lit("POSITIVE"))
            .when(pl.col("author_mean") <= sentiment_settings.negative_at).then(pl.lit("NEGATIVE"))
            .otherwise(pl.lit("NEUTRAL")).alias("label"),
            pl.col("label").alias("post_rule_label"),
        )
        .drop("next_day_return")
        .sort("created_at", "post_id")
        .collect()
    )
    if frame.filter(pl.col("split") == "train").is_empty():
        raise ValueError("no posts in the training window: the sentiment task needs posts in the lake")
    return frame


def sentiment_records(frame: pl.DataFrame, prompter: Prompter) -> list[dict[str, Any]]:
    instruction = prompter.instruction_for("sentiment")
    return [{"date": d.isoformat(), "split": sp, "instruction": instruction,
             "input": " ".join((t or "").split())[:400], "output": lab}
            for d, sp, t, lab in frame.select("date", "split", "text", "label").iter_rows()]


def tx_value_windows(transactions: pl.LazyFrame, vocabulary: pl.LazyFrame, window: int, eps_eth: float) -> pl.LazyFrame:
    """The thesis's task, vectorised: for every transaction t (in chain order) with ``window``
    predecessors, the previous ``window`` transactions (frequent addresses by identity, others
    'unknown', value, seconds since the previous one) and the target log(eps + value) of t."""
    known = vocabulary.with_columns(pl.lit(True).alias("_k"))
    txs = (
        transactions.select("block_number", "transaction_index", "block_timestamp", "from_address", "to_address", "value_eth")
        .join(known.rename({"address": "from_address", "_k": "_fk"}), on="from_address", how="left")
        .join(known.rename({"address": "to_address", "_k": "_tk"}), on="to_address", how="left")
        .sort("block_number", "transaction_index")  # joins do not keep order: sort before diff/shift
        .with_columns(
            pl.when(pl.col("_fk")).then(pl.col("from_address")).otherwise(pl.lit("unknown")).alias("from_id"),
            pl.when(pl.col("_tk")).then(pl.col("to_address"))
            .when(pl.col("to_address").is_null()).then(pl.lit("create")).otherwise(pl.lit("unknown")).alias("to_id"),
            (pl.col("value_eth") + eps_eth).log().alias("log_value"),
            pl.col("block_timestamp").diff().dt.total_seconds().fill_null(0).alias("dt_s"),
        )
    )
    # Format each transaction once, then shift the finished lines (cheap) into the window columns.
    line = pl.format("{} > {} {} ETH +{}s", "from_id", "to_id", pl.col("value_eth").round(4), pl.col("dt_s")).alias("_line")
    lagged = [pl.col("_line").shift(k).alias(f"tx_{k}") for k in range(window, 0, -1)]
    return (
        txs.with_columns(line)
        .with_columns(*lagged, pl.col("log_value").shift(1).alias("last_log_value"))
        .with_row_index("_i")
        .filter(pl.col("_i") >= window)
        .select(pl.col("block_timestamp").dt.date().alias("date"), "block_number", "transaction_index",
                pl.col("log_value").alias("target"), "last_log_value", *[f"tx_{k}" for k in range(window, 0, -1)])
    )


def tx_value_frame(lake, base: dict[str, Any], ds) -> pl.DataFrame:
    plan = base["plan"]
    windows = tx_value_windows(lake.scan("transactions", base["start"], base["end"]), base["vocabulary"],
                               ds.tx_window, ds.tx_value_eps_eth)
    frame = (
        assign_split(windows.with_columns(pl.lit(0.0).alias("next_day_return")), plan)
        .filter(pl.col("split").is_in(list(SPLITS)))
        .drop("next_day_return")
        .collect()
    )
    # Keep the records manageable: an evenly spaced, seeded sample per split.
    parts = []
    for split in SPLITS:
        sub = frame.filter(pl.col("split") == split)
        if sub.height > ds.tx_max_windows_per_split:
            sub = sub.sample(ds.tx_max_windows_per_split, seed=ds.seed).sort("block_number", "transaction_index")
        parts.append(sub)
    return pl.concat(parts)


def tx_value_records(frame: pl.DataFrame, prompter: Prompter, window: int) -> list[dict[str, Any]]:
    instruction = prompter.instruction_for("tx-value")
    cols = [f"tx_{k}" for k in range(window, 0, -1)]
    return [{"date": row["date"].isoformat(), "split": row["split"], "instruction": instruction,
             "input": "\n".join(row[c] for c in cols), "output": f"{row['target']:.3f}"}
            for row in frame.iter_rows(named=True)]


def build_dataset_version(lake, versions: DatasetVersions, *, dataset_settings, assets: list[str],
                          settings_hash: str, settings_public: dict[str, Any], sentiment_settings=None) -> DatasetManifest:
    """Read the lake, build the configured task's records, write a versioned dataset.

    Returns the manifest. Idempotent: the same inputs and settings give the same fingerprint, and
    an existing dataset with that fingerprint is not rewritten.
    """
    ds = dataset_settings
    if ds.name not in TASKS:
        raise ValueError(f"dataset.name must be one of {TASKS}, got {ds.name!r}")
    if sentiment_settings is None:
        from tasks.core.settings import SentimentSettings

        sentiment_settings = SentimentSettings()
    base = daily_frame(lake, ds, assets, sentiment_settings)
    prompter = Prompter.load()
    if ds.name in ("direction", "return"):
        frame = base["frame"]
        records = direction_records(base, prompter, assets, ds.name)
    elif ds.name == "sentiment":
        frame = sentiment_frame(lake, base, sentiment_settings)
        records = sentiment_records(frame, prompter)
    else:
        frame = tx_value_frame(lake, base, ds)
        records = tx_value_records(frame, prompter, ds.tx_window)
    fp = fingerprint(records, settings_hash)
    version = versions.version(fp)
    plan = base["plan"]
    manifest = DatasetManifest(
        fingerprint=fp,
        task=ds.name,
        kind="class" if ds.name in CLASS_TASKS else "number",
        target_asset=ds.target_asset,
        start=base["start"], end=base["end"],
        splits={"train": plan.train, "validation": plan.validation, "test": plan.test},
        embargo_days=plan.embargo_days,
        thresholds=base["thresholds"],
        rows={s: sum(1 for r in records if r["split"] == s) for s in (*SPLITS, "predict")},
        label_counts=label_counts(frame) if ds.name in CLASS_TASKS else {},
        inputs={name: len(lake.partition_files(name, base["start"], base["end"]))
                for name in ("prices", "transactions", "posts", "sentiment")},
        chain_label=base["chain_label"],
        numeric_features=numeric_feature_columns(base["frame"]),
        settings=settings_public,
        path=str(version.dir),
    )
    if not version.exists():
        write_dataset(version, frame, records, manifest)
    versions.mark_latest(fp)
    return manifest

