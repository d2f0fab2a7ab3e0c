import math
import re
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.core.schemas import PRICES
from tasks.dataset.features import chain_daily_activity, chain_new_addresses, price_features, social_features

D0 = date(2021, 1, 1)


def candles(closes: dict[int, float], asset: str = "ETH") -> pl.LazyFrame:
    days = sorted(closes)
    return pl.LazyFrame({
        "date": [D0 + timedelta(days=d) for d in days], "asset": [asset] * len(days),
        "open_usd": [closes[d] for d in days], "high_usd": [closes[d] for d in days],
        "low_usd": [closes[d] for d in days], "close_usd": [closes[d] for d in days],
        "volume_base": [100.0] * len(days), "source": ["t"] * len(days),
    }, schema=PRICES)


def test_returns_are_null_across_a_gap_never_spanning_it():
    # day 2 missing: day 3's 1-day return must be null, not the 2-day move.
    out = price_features(candles({0: 100.0, 1: 110.0, 3: 121.0, 4: 133.1}), D0, D0 + timedelta(days=4), ["ETH"]).collect()
    expected = pl.DataFrame({"date": [D0 + timedelta(days=i) for i in range(5)],
                             "eth_ret_1d": [None, 0.1, None, None, 0.1]})
    assert_frame_equal(out.select("date", "eth_ret_1d"), expected, check_exact=False, abs_tol=1e-12)


def tx(day: int, sender: str, receiver: str | None, eth: float, typ: int = 2, gwei: int = 30) -> dict:
    return {"block_timestamp": datetime(2021, 1, 1 + day, 12, tzinfo=UTC), "from_address": sender,
            "to_address": receiver, "value_eth": eth, "transaction_type": typ, "gas_price_wei": gwei * 10**9}


def test_chain_daily_activity_counts():
    frame = pl.LazyFrame([tx(0, "a", "b", 1.0), tx(0, "a", "c", 3.0, typ=0), tx(0, "d", None, 0.0), tx(1, "b", "a", 2.0)])
    out = chain_daily_activity(frame).sort("date").collect()
    first = out.row(0, named=True)
    assert first["tx_count"] == 3 and first["unique_senders"] == 2 and first["unique_receivers"] == 2
    assert first["contract_creations"] == 1 and first["value_eth_total"] == pytest.approx(4.0)
    assert first["eip1559_share"] == pytest.approx(2 / 3) and first["top10_sender_share"] == pytest.approx(1.0)


def test_new_addresses_counts_first_sightings_only():
    frame = pl.LazyFrame([tx(0, "a", "b", 1.0), tx(1, "a", "c", 1.0), tx(2, "c", "d", 1.0)])
    out = chain_new_addresses(frame).sort("date").collect()
    assert out["new_addresses"].to_list() == [2, 1, 1]  # {a,b}, {c}, {d}


def test_days_without_posts_have_missing_sentiment_not_zero():
    sentiment = pl.LazyFrame({"post_id": ["1"], "source": ["file"], "created_at": [datetime(2021, 1, 1, 5, tzinfo=UTC)],
                              "author_username": ["x"], "compound": [0.6], "label": ["POSITIVE"]})
    posts = pl.LazyFrame({"post_id": ["1"], "source": ["file"], "created_at": [datetime(2021, 1, 1, 5, tzinfo=UTC)],
                          "author_followers": pl.Series([None], dtype=pl.Int64), "text": ["great"]})
    out = social_features(sentiment, posts, [D0, D0 + timedelta(days=1)], top_posts=2).sort("date").collect()
    assert out["post_count"].to_list() == [1, 0]
    assert out["sentiment_mean"].to_list() == [pytest.approx(0.6), None]
    assert out["top_posts"].to_list() == [["great"], None]


def test_incremental_address_state_matches_the_full_recount():
    from tasks.dataset.features import AddressState

    # 6 days, lookback 2: "e" comes back after 3 days away and counts as new again.
    rows = [tx(0, "a", "b", 1.0), tx(1, "a", "c", 1.0), tx(1, "e", "a", 1.0), tx(2, "c", "d", 1.0),
            tx(3, "a", "b", 1.0), tx(4, "e", "b", 1.0), tx(5, "f", "a", 1.0)]
    full = chain_new_addresses(pl.LazyFrame(rows), lookback_days=2).collect()
    expected = dict(zip(full["date"].to_list(), full["new_addresses"].to_list(), strict=True))
    state = AddressState.from_history(pl.LazyFrame(rows[:1]), lookback_days=2)
    got = {D0: state.size}
    for day in range(1, 6):
        state, new = state.update(pl.LazyFrame([r for r in rows if r["block_timestamp"].day == 1 + day]))
        got[D0 + timedelta(days=day)] = new
    assert got == {d: expected.get(d, 0) for d in got}
    assert expected[D0 + timedelta(days=4)] == 1  # e returned after more than the lookback


def _real_candles(scale_from: date | None = None, factor: float = 10.0) -> pl.LazyFrame:
    """The bundled real ETH/BTC candles of 2021; every price from ``scale_from`` on multiplied by ``factor``."""
    from tasks.core.settings import SAMPLE_DIR

    frames = []
    for asset in ("ETH", "BTC"):
        raw = pl.read_csv(SAMPLE_DIR / "prices" / f"{asset.lower()}_usd_daily.csv", try_parse_dates=True)
        frames.append(raw.filter(pl.col("date").dt.year() == 2021).select(
            "date", pl.lit(asset).alias("asset"), *(pl.col(c).alias(f"{c}_usd") for c in ("open", "high", "low", "close")),
            pl.col("volume").alias("volume_base"), pl.lit("file").alias("source")))
    frame = pl.concat(frames)
    if scale_from is not None:
        later = pl.col("date") >= scale_from
        frame = frame.with_columns(pl.when(later).then(pl.col(f"{c}_usd") * factor).otherwise(pl.col(f"{c}_usd"))
                                   for c in ("open", "high", "low", "close"))
    return frame.lazy().cast(dict(PRICES))


def _model_inputs(prices: pl.LazyFrame) -> tuple[pl.DataFrame, list[str]]:
    """What the baselines and the prompts see of each day: the numeric feature columns and the rendered input."""
    from tasks.dataset.features import label_next_day_return, relative_levels
    from tasks.dataset.frames import numeric_feature_columns
    from tasks.dataset.records import render_input

    frame = (price_features(prices, date(2021, 1, 1), date(2021, 12, 31), ["ETH", "BTC"])
             .pipe(label_next_day_return, "ETH").pipe(relative_levels).collect())
    numeric = frame.select("date", *numeric_feature_columns(frame))
    return numeric, [render_input(row, ["ETH", "BTC"], "none") for row in frame.iter_rows(named=True)]


def test_prices_ten_times_higher_from_the_test_period_on_change_no_model_input():
    """Issue 24: the logistic baseline extrapolated raw closes (BTC at 54k-125k against 3k-67k in training) and
    the prompts carried 'close 3,442.20 USD'. Inputs are stationary now: a test period whose prices are all
    10x leaves every input unchanged once the longest window (30 days) is inside it, and the level never shows."""
    test_start = date(2021, 9, 1)
    base_numeric, base_prompts = _model_inputs(_real_candles())
    scaled_numeric, scaled_prompts = _model_inputs(_real_candles(scale_from=test_start))
    settled = test_start + timedelta(days=31)
    keep = pl.col("date") >= settled
    assert_frame_equal(base_numeric.filter(keep), scaled_numeric.filter(keep), check_exact=False, rel_tol=1e-9)
    days = base_numeric["date"].to_list()
    after = [i for i, d in enumerate(days) if d >= settled]
    assert len(after) > 90 and [base_prompts[i] for i in after] == [scaled_prompts[i] for i in after]
    assert not any(c.endswith("_close_usd") for c in base_numeric.columns)
    assert all("USD" not in p for p in base_prompts)
    assert not any(re.search(r"\b(19|20)\d\d\b", p) for p in base_prompts)  # nor the year: the calendar trends too
    whole_numeric, whole_prompts = _model_inputs(_real_candles(scale_from=date(2021, 1, 1)))  # a change of unit
    assert_frame_equal(base_numeric, whole_numeric, check_exact=False, rel_tol=1e-9) and whole_prompts == base_prompts


def test_levels_reach_models_only_as_ratios_to_their_trailing_mean():
    from tasks.dataset.features import relative_levels
    from tasks.dataset.frames import numeric_feature_columns

    frame = pl.LazyFrame({"date": [D0 + timedelta(days=i) for i in range(10)],
                          "tx_count": [100, 100, 100, 100, 100, 100, 100, 300, 100, 100]})
    out = relative_levels(frame).collect()
    assert numeric_feature_columns(out) == ["tx_count_vs_7d"]
    assert out["tx_count_vs_7d"][:7].is_null().all() and out["tx_count_vs_7d"][7] == pytest.approx(math.log(301 / 101))
    scaled = relative_levels(frame.with_columns(pl.col("tx_count") * 1000)).collect()
    assert scaled["tx_count_vs_7d"][7] == pytest.approx(math.log(300001 / 100001))
