"""Pure transforms: lake frames -> one row of features per UTC day.

Every function takes and returns ``pl.LazyFrame``, does no IO and reads no clock. Point in time:
the features of day t only use rows timestamped before 00:00 UTC of day t+1 (a daily candle of
day t closes at that instant). Gaps stay gaps: returns are computed on a full calendar, so a
missing day gives a null, never a return over two days.

Stationary only: what a model or a baseline sees are returns, volatilities, ratios to a trailing
mean and shares, never a level that trends (a close in USD, a count of transactions or posts, a gas
price). The levels stay in the frame, for labels and for people, under the names in ``LEVELS``
(``*_close_usd`` too), and :func:`relative_levels` adds each one's log ratio to its trailing mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

GWEI = 1e9
# Daily levels that trend with adoption, price or the chain's size: kept for people and labels, and
# seen by models only as ``<name>_vs_<RELATIVE_WINDOW_DAYS>d`` (their log ratio to the trailing mean).
LEVELS = ("tx_count", "unique_senders", "unique_receivers", "value_eth_total", "value_eth_median", "contract_creations",
          "gas_price_gwei_p50", "gas_price_gwei_p90", "new_addresses", "post_count", "unique_authors")
RELATIVE_WINDOW_DAYS = 7
LONG_WINDOW_DAYS = 30


def calendar(start: date, end: date) -> pl.LazyFrame:
    return pl.LazyFrame({"date": pl.date_range(start, end, "1d", eager=True)})


# ----------------------------------------------------------------------------- chain
def chain_daily_activity(transactions: pl.LazyFrame) -> pl.LazyFrame:
    """Per day: counts, value, fee market and concentration of the day's transactions."""
    txs = transactions.with_columns(pl.col("block_timestamp").dt.date().alias("date"))
    per_sender = txs.group_by("date", "from_address").agg(pl.len().alias("n"))
    concentration = per_sender.group_by("date").agg(
        (pl.col("n").top_k(10).sum() / pl.col("n").sum()).alias("top10_sender_share")
    )
    daily = txs.group_by("date").agg(
        pl.len().alias("tx_count"),
        pl.col("from_address").n_unique().alias("unique_senders"),
        pl.col("to_address").drop_nulls().n_unique().alias("unique_receivers"),
        pl.col("value_eth").sum().alias("value_eth_total"),
        pl.col("value_eth").median().alias("value_eth_median"),
        (pl.col("transaction_type") == 2).mean().alias("eip1559_share"),
        pl.col("to_address").is_null().sum().alias("contract_creations"),
        (pl.col("gas_price_wei").quantile(0.5) / GWEI).alias("gas_price_gwei_p50"),
        (pl.col("gas_price_wei").quantile(0.9) / GWEI).alias("gas_price_gwei_p90"),
    )
    return daily.join(concentration, on="date", how="left")


def _address_days(transactions: pl.LazyFrame) -> pl.LazyFrame:
    """Distinct (address, date) sightings, as sender or receiver."""
    txs = transactions.with_columns(pl.col("block_timestamp").dt.date().alias("date"))
    return pl.concat(
        [
            txs.select("date", pl.col("from_address").alias("address")),
            txs.select("date", pl.col("to_address").alias("address")).drop_nulls(),
        ]
    ).unique()


def chain_new_addresses(transactions: pl.LazyFrame, lookback_days: int = 365) -> pl.LazyFrame:
    """Per day: addresses not seen on any of the previous ``lookback_days`` days.

    Exact and vectorised: each sighting is compared with the same address's previous sighting.
    The scan must start ``lookback_days`` before the first day reported for the count to be right.
    """
    sightings = _address_days(transactions).sort("address", "date")
    prev = pl.col("date").shift(1).over("address")
    is_new = prev.is_null() | ((pl.col("date") - prev).dt.total_days() > lookback_days)
    return sightings.filter(is_new).group_by("date").agg(pl.len().alias("new_addresses"))


@dataclass(frozen=True)
class AddressState:
    """Where every address was last seen, for incremental daily builds (no full history scan).

    Addresses not seen within ``lookback_days`` are pruned: they would count as new anyway, so
    the state stays bounded by the addresses active in one lookback window.
    """

    frame: pl.DataFrame  # address (str), last_seen (date)
    lookback_days: int

    @classmethod
    def from_history(cls, transactions: pl.LazyFrame, lookback_days: int = 365) -> AddressState:
        frame = (_address_days(transactions).group_by("address").agg(pl.col("date").max().alias("last_seen"))
                 .collect(engine="streaming"))
        return cls(frame, lookback_days)

    @property
    def size(self) -> int:
        return self.frame.height

    def update(self, day_transactions: pl.LazyFrame) -> tuple[AddressState, int]:
        """Fold one new day in: (new state, number of new addresses that day)."""
        seen = _address_days(day_transactions).collect()
        if seen.is_empty():
            return self, 0
        day = seen["date"].max()
        joined = seen.join(self.frame, on="address", how="left")
        is_new = joined["last_seen"].is_null() | ((joined["date"] - joined["last_seen"]).dt.total_days() > self.lookback_days)
        horizon = day - timedelta(days=self.lookback_days)
        frame = pl.concat([
            self.frame.join(seen.select("address"), on="address", how="anti").filter(pl.col("last_seen") >= horizon),
            seen.select("address", pl.col("date").alias("last_seen")),
        ])
        return AddressState(frame, self.lookback_days), int(is_new.sum())


def frequent_addresses(transactions: pl.LazyFrame, start: date, end: date, min_transactions: int) -> pl.LazyFrame:
    """The thesis's address vocabulary: addresses in more than ``min_transactions`` transactions
    (as sender or receiver) between start and end - pass the TRAINING window only, so the
    validation and test days do not leak into it. Every other address is 'unknown'."""
    txs = transactions.filter(pl.col("block_timestamp").dt.date().is_between(start, end))
    both = pl.concat([txs.select(pl.col("from_address").alias("address")),
                      txs.select(pl.col("to_address").alias("address")).drop_nulls()])
    return both.group_by("address").agg(pl.len().alias("n")).filter(pl.col("n") > min_transactions).select("address")


def known_address_activity(transactions: pl.LazyFrame, vocabulary: pl.LazyFrame) -> pl.LazyFrame:
    """Per day: share of transactions sent by, and sent to, an address of the vocabulary."""
    known = vocabulary.with_columns(pl.lit(True).alias("_known"))
    txs = transactions.with_columns(pl.col("block_timestamp").dt.date().alias("date"))
    return (
        txs.join(known.rename({"address": "from_address", "_known": "_from_known"}), on="from_address", how="left")
        .join(known.rename({"address": "to_address", "_known": "_to_known"}), on="to_address", how="left")
        .group_by("date")
        .agg(
            pl.col("_from_known").fill_null(False).mean().alias("known_sender_share"),
            pl.col("_to_known").fill_null(False).mean().alias("known_receiver_share"),
        )
    )


def chain_features(transactions: pl.LazyFrame, chain_days: list[date], *, new_address_lookback_days: int = 365,
                   vocabulary: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """Chain features for the days whose chain partitions are complete (others stay null)."""
    done = pl.LazyFrame({"date": pl.Series(chain_days, dtype=pl.Date)})
    out = (
        done.join(chain_daily_activity(transactions), on="date", how="left")
        .join(chain_new_addresses(transactions, new_address_lookback_days), on="date", how="left")
        .with_columns(pl.col("tx_count", "contract_creations", "new_addresses").fill_null(0))
    )
    if vocabulary is not None:
        out = out.join(known_address_activity(transactions, vocabulary), on="date", how="left")
    return out


# ----------------------------------------------------------------------------- prices
def price_features(prices: pl.LazyFrame, start: date, end: date, assets: list[str]) -> pl.LazyFrame:
    """Per day and asset: 1/3/7-day returns, 7- and 30-day realized volatility, the close's ratio to its
    30-day mean, the volume change; and the close itself (a level: the label's source, not a feature)."""
    out = calendar(start, end)
    for asset in assets:
        a = asset.lower()
        p = prices.filter(pl.col("asset") == asset).select("date", "close_usd", "volume_base")
        ret1 = pl.col("close_usd") / pl.col("close_usd").shift(1) - 1
        out = out.join(p, on="date", how="left").sort("date").with_columns(
            pl.col("close_usd").alias(f"{a}_close_usd"),
            ret1.alias(f"{a}_ret_1d"),
            (pl.col("close_usd") / pl.col("close_usd").shift(3) - 1).alias(f"{a}_ret_3d"),
            (pl.col("close_usd") / pl.col("close_usd").shift(7) - 1).alias(f"{a}_ret_7d"),
            ret1.rolling_std(7, min_samples=7).alias(f"{a}_vol_7d"),
            ret1.rolling_std(LONG_WINDOW_DAYS, min_samples=20).alias(f"{a}_vol_30d"),
            (pl.col("close_usd") / pl.col("close_usd").rolling_mean(LONG_WINDOW_DAYS, min_samples=20) - 1
             ).alias(f"{a}_close_vs_30d"),
            (pl.col("volume_base") / pl.col("volume_base").shift(1) - 1).alias(f"{a}_volume_change_1d"),
        ).drop("close_usd", "volume_base")
    return out


def label_next_day_return(features: pl.LazyFrame, target: str) -> pl.LazyFrame:
    """The target's return from day t's close to day t+1's close (null across a gap)."""
    close = pl.col(f"{target.lower()}_close_usd")
    return features.sort("date").with_columns((close.shift(-1) / close - 1).alias("next_day_return"))


# ----------------------------------------------------------------------------- social
def social_features(sentiment: pl.LazyFrame, posts: pl.LazyFrame, social_days: list[date], top_posts: int,
                    **sentiment_options) -> pl.LazyFrame:
    """Per day: volume, mean and follower-weighted sentiment, label shares, per-author shares
    (tasks.social.sentiment.daily_sentiment, with the sentiment settings as ``sentiment_options``) and
    the latest posts as text.

    Days whose social partition is complete but empty get post_count 0 and null sentiment (no
    posts is not neutral sentiment); days never collected stay null throughout.
    """
    from tasks.social.sentiment import daily_sentiment

    daily = daily_sentiment(sentiment, posts, **sentiment_options)
    latest = (
        posts.with_columns(pl.col("created_at").dt.date().alias("date"))
        .sort("created_at", descending=True)
        .group_by("date", maintain_order=True)
        .agg(pl.col("text").head(top_posts).alias("top_posts"))
    )
    done = pl.LazyFrame({"date": pl.Series(social_days, dtype=pl.Date)})
    return (
        done.join(daily, on="date", how="left")
        .join(latest, on="date", how="left")
        .with_columns(pl.col("post_count").fill_null(0).cast(pl.UInt32), pl.col("unique_authors").fill_null(0).cast(pl.UInt32))
    )


def relative_levels(features: pl.LazyFrame, window: int = RELATIVE_WINDOW_DAYS) -> pl.LazyFrame:
    """For each level of ``LEVELS`` present: log((x + 1) / (mean of the previous ``window`` days + 1)), a
    unitless, scale-free change (null until ``window`` earlier days are known, and on a day without it)."""
    present = [c for c in LEVELS if c in features.collect_schema().names()]
    trailing = {c: pl.col(c).cast(pl.Float64).shift(1).rolling_mean(window, min_samples=window) for c in present}
    return features.sort("date").with_columns(
        ((pl.col(c).cast(pl.Float64) + 1).log() - (trailing[c] + 1).log()).alias(f"{c}_vs_{window}d") for c in present)


def daily_features(
    prices: pl.LazyFrame,
    transactions: pl.LazyFrame,
    sentiment: pl.LazyFrame,
    posts: pl.LazyFrame,
    *,
    start: date,
    end: date,
    assets: list[str],
    target: str,
    chain_days: list[date],
    social_days: list[date],
    top_posts: int,
    new_address_lookback_days: int = 365,
    vocabulary: pl.LazyFrame | None = None,
    sentiment_options: dict | None = None,
) -> pl.LazyFrame:
    """One row per day with a target price: every feature plus next_day_return (the label source)."""
    target_close = f"{target.lower()}_close_usd"
    return (
        price_features(prices, start, end, assets)
        .pipe(label_next_day_return, target)
        .join(chain_features(transactions, chain_days, new_address_lookback_days=new_address_lookback_days,
                             vocabulary=vocabulary), on="date", how="left")
        .join(social_features(sentiment, posts, social_days, top_posts, **(sentiment_options or {})), on="date", how="left")
        .pipe(relative_levels)
        .filter(pl.col(target_close).is_not_null())
        .sort("date")
    )
