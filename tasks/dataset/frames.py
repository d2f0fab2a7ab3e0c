"""The frame each task's records are made from, read from the lake: one row per day (direction,
return), per post (sentiment) or per transaction window (tx-value), each with its split."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import polars as pl

from tasks.core.errors import InputError
from tasks.core.settings import DatasetSettings, SentimentSettings
from tasks.core.storage import Lake
from tasks.dataset.features import LEVELS, daily_features, frequent_addresses, known_address_activity
from tasks.dataset.labels import add_persistence, label_from_return, label_thresholds
from tasks.dataset.split import SPLITS, SplitPlan, assign_split, plan_splits

NUMERIC_EXCLUDE = {"date", "next_day_return", "label", "split", "top_posts"}
# The chain id anvil and hardhat give a local development chain (no public chain uses it): its
# traffic is whatever a script sent, so records call it synthetic. The demo's node runs on it
# (tasks/chain/localnode.py; tests/dataset/test_dataset.py checks that the two agree).
LOCAL_DEV_CHAIN_ID = 31337


@dataclass(frozen=True)
class DailyFrame:
    """Features per day with split and label, and what was decided on the way: the base of every task."""

    frame: pl.DataFrame
    plan: SplitPlan
    start: date
    end: date
    vocabulary: pl.LazyFrame  # frequent addresses, counted on the training window only
    thresholds: dict[str, float]  # negative_below / positive_above
    chain_label: str


def numeric_feature_columns(frame: pl.DataFrame) -> list[str]:
    """What the baselines see: every numeric column but the label's source and the trending levels."""
    return [c for c, t in frame.schema.items() if c not in NUMERIC_EXCLUDE and t.is_numeric() and c != "today_label"
            and c not in LEVELS and not c.endswith("_close_usd")]


def describe_chain(lake: Lake, start: date, end: date) -> str:
    """How the chain data is described in records and tags (the demo's local chain is synthetic)."""
    ids = {(lake.manifest("transactions", d) or {}).get("chain_id")
           for d in lake.completed_days("transactions") if start <= d <= end} - {None}
    if not ids:
        return "no chain data"
    if LOCAL_DEV_CHAIN_ID in ids:
        return "synthetic local chain"
    return "chain id " + ",".join(str(i) for i in sorted(ids))


def sentiment_options(sentiment_settings: SentimentSettings | None) -> dict[str, Any]:
    if sentiment_settings is None:
        return {}
    return {"excluded_authors": tuple(sentiment_settings.excluded_authors), "min_posts": sentiment_settings.min_posts_per_author,
            "positive_at": sentiment_settings.positive_at, "negative_at": sentiment_settings.negative_at}


def daily_frame(lake: Lake, ds: DatasetSettings, assets: list[str], sentiment_settings: SentimentSettings | None = None) -> DailyFrame:
    """Features per day, the split plan, labels and thresholds: the base of every task."""
    price_days = lake.completed_days("prices")
    if not price_days:
        raise InputError("no price partitions in the lake: run `chainsignal ingest` first")
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
    starts = (ds.validation_start, ds.test_start) if ds.validation_start and ds.test_start else None
    plan = plan_splits(labelled_days, ds.validation_fraction, ds.test_fraction, ds.embargo_days, starts)
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
    return DailyFrame(frame=frame, plan=plan, start=start, end=end, vocabulary=vocabulary,
                      thresholds={"negative_below": neg, "positive_above": pos},
                      chain_label=describe_chain(lake, start, end))


def sentiment_frame(lake: Lake, base: DailyFrame, sentiment_settings: SentimentSettings) -> pl.DataFrame:
    """The original study's task: a post's text -> its author's mean sentiment label.

    The author's mean is taken over the author's posts in the same split (so no split sees
    another's posts); the per-post VADER label is kept as the rule the task is measured against.
    """
    posts = lake.scan("posts", base.start, base.end).select("post_id", "source", "text")
    sent = lake.scan("sentiment", base.start, base.end)
    frame = (
        sent.join(posts, on=["post_id", "source"], how="inner")
        .with_columns(pl.col("created_at").dt.date().alias("date"))
        .pipe(lambda f: assign_split(f.with_columns(pl.lit(0.0).alias("next_day_return")), base.plan))
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
        raise InputError("no posts in the training window: the sentiment task needs posts in the lake")
    return frame


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


def tx_value_frame(lake: Lake, base: DailyFrame, ds: DatasetSettings) -> pl.DataFrame:
    windows = tx_value_windows(lake.scan("transactions", base.start, base.end), base.vocabulary,
                               ds.tx_window, ds.tx_value_eps_eth)
    frame = (
        assign_split(windows.with_columns(pl.lit(0.0).alias("next_day_return")), base.plan)
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
