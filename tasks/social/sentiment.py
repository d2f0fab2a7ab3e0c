"""Post sentiment with VADER plus a small crypto lexicon, and the per-author aggregation.

VADER's lexicon ships inside its wheel (no download, no model hub). Plain VADER does not know
crypto slang: "Bitcoin to the moon! #BTC bullish" scores 0.0. :data:`CRYPTO_LEXICON` adds valences
on VADER's -4..+4 scale for the words the original study's tweets lean on.

The original study's per-author aggregation (each author's mean sentiment over the window, authors
on an exclusion list skipped, each author counted once, the mean mapped to POSITIVE / NEUTRAL /
NEGATIVE by thresholds) is :func:`author_sentiment`, a pure polars transform; daily aggregates
(volume, mean, follower-weighted mean, label shares, unique authors) are :func:`daily_sentiment`.
"""

from __future__ import annotations

from functools import lru_cache

import polars as pl

from tasks.core.schemas import SENTIMENT

POSITIVE_AT = 0.05  # VADER's documented thresholds on the compound score (settings default)
NEGATIVE_AT = -0.05

# Valences on VADER's scale (-4 .. +4; VADER's own "good" is 1.9, "great" 3.1, "bad" -2.5).
# Chosen by us for crypto usage; multi-word slang is handled as its single distinctive token.
CRYPTO_LEXICON: dict[str, float] = {
    "bullish": 2.5, "bearish": -2.5, "moon": 2.0, "mooning": 2.5, "pump": 1.5, "pumping": 1.8,
    "dump": -2.0, "dumping": -2.3, "rekt": -3.0, "fud": -2.0, "hodl": 1.5, "hodling": 1.5,
    "ath": 2.2, "btfd": 1.2, "fomo": -0.8, "rug": -3.0, "rugpull": -3.2, "rugged": -3.0,
    "scam": -3.0, "ponzi": -3.0, "lambo": 1.8, "wagmi": 2.0, "ngmi": -2.0, "capitulation": -2.2,
    "breakout": 1.8, "rally": 1.8, "rallies": 1.8, "crash": -2.8, "crashing": -2.8, "sell-off": -2.0,
    "selloff": -2.0, "liquidated": -2.5, "bagholder": -1.8, "shill": -1.5, "gm": 0.8,
}


@lru_cache(maxsize=2)
def _analyzer(crypto_lexicon: bool = True):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    if crypto_lexicon:
        analyzer.lexicon.update(CRYPTO_LEXICON)
    return analyzer


def score_texts(texts: list[str], crypto_lexicon: bool = True) -> list[float]:
    analyzer = _analyzer(crypto_lexicon)
    return [analyzer.polarity_scores(t or "")["compound"] for t in texts]


def label_from_score(score: pl.Expr, positive_at: float = POSITIVE_AT, negative_at: float = NEGATIVE_AT) -> pl.Expr:
    return (
        pl.when(score >= positive_at).then(pl.lit("POSITIVE"))
        .when(score <= negative_at).then(pl.lit("NEGATIVE"))
        .otherwise(pl.lit("NEUTRAL"))
    )


@lru_cache(maxsize=2)
def _classifier(model: str, device: str):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
    try:
        tok = AutoTokenizer.from_pretrained(model)
        clf = AutoModelForSequenceClassification.from_pretrained(model).to(dev).eval()
    except OSError as exc:
        raise ValueError(f"sentiment.model: cannot load {model!r} ({str(exc).splitlines()[0][:120]})") from None
    labels = {i: str(name).upper() for i, name in clf.config.id2label.items()}
    if not any(n.startswith("POS") for n in labels.values()) or not any(n.startswith("NEG") for n in labels.values()):
        raise ValueError(f"sentiment.model: {model!r} has labels {sorted(labels.values())}, needs POSITIVE and NEGATIVE")
    return tok, clf, labels, dev


def score_texts_with_model(texts: list[str], model: str, batch_size: int = 32, device: str = "auto") -> list[float]:
    """A transformers sentiment classifier (hub id or local path), batched, on GPU when present:
    compound = P(positive) - P(negative), in [-1, 1] like VADER's."""
    import torch

    tok, clf, labels, dev = _classifier(model, device)
    pos = [i for i, name in labels.items() if name.startswith("POS")]
    neg = [i for i, name in labels.items() if name.startswith("NEG")]
    out: list[float] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok([t or "" for t in texts[i:i + batch_size]], truncation=True, max_length=256, padding=True,
                      return_tensors="pt").to(dev)
            p = torch.softmax(clf(**enc).logits.float(), dim=-1)
            out += (p[:, pos].sum(-1) - p[:, neg].sum(-1)).cpu().tolist()
    return out


def compute_sentiment(posts: pl.DataFrame, *, crypto_lexicon: bool = True, positive_at: float = POSITIVE_AT,
                      negative_at: float = NEGATIVE_AT, model: str | None = None) -> pl.DataFrame:
    """posts (POSTS shape) -> one sentiment row per post (SENTIMENT shape). VADER (+ crypto
    lexicon) by default; a transformers classifier when ``model`` names one."""
    texts = posts["text"].to_list()
    raw = score_texts_with_model(texts, model) if model else score_texts(texts, crypto_lexicon)
    scores = pl.Series("compound", raw, dtype=pl.Float64)
    return (
        posts.select("post_id", "source", "created_at", "author_username")
        .with_columns(scores)
        .with_columns(label_from_score(pl.col("compound"), positive_at, negative_at).alias("label"))
        .select(list(SENTIMENT))
    )


def _with_followers(sentiment: pl.LazyFrame, posts: pl.LazyFrame | None) -> pl.LazyFrame:
    if posts is None:
        return sentiment.with_columns(pl.lit(None, pl.Int64).alias("author_followers"))
    followers = posts.select("source", "post_id", "author_followers").unique(["source", "post_id"], keep="first")
    return sentiment.join(followers, on=["source", "post_id"], how="left")


def author_sentiment(
    sentiment: pl.LazyFrame,
    posts: pl.LazyFrame | None = None,
    *,
    by: tuple[str, ...] = ("date",),
    excluded_authors: tuple[str, ...] = (),
    min_posts: int = 1,
    positive_at: float = POSITIVE_AT,
    negative_at: float = NEGATIVE_AT,
) -> pl.LazyFrame:
    """One row per (window, author): the author's mean compound, post count, latest known
    follower count and label. ``by`` names the window columns (default the UTC day, derived from
    ``created_at``; pass ``()`` for the whole frame as one window). Authors are matched
    case-insensitively (X usernames are); excluded ones and those under ``min_posts`` are dropped.
    """
    s = _with_followers(sentiment, posts)
    if "date" in by:
        s = s.with_columns(pl.col("created_at").dt.date().alias("date"))
    excluded = [a.lower() for a in excluded_authors]
    keys = [*by, "author"]
    return (
        s.with_columns(pl.col("author_username").str.to_lowercase().alias("author"))
        .filter(pl.col("author").is_not_null() & ~pl.col("author").is_in(excluded))
        .group_by(keys)
        .agg(
            pl.col("compound").mean().alias("author_mean"),
            pl.len().alias("author_posts"),
            pl.col("author_followers").sort_by("created_at", "post_id").drop_nulls().last().alias("author_followers"),
        )
        .filter(pl.col("author_posts") >= min_posts)
        .with_columns(label_from_score(pl.col("author_mean"), positive_at, negative_at).alias("author_label"))
        .sort(keys)
    )


def daily_sentiment(
    sentiment: pl.LazyFrame,
    posts: pl.LazyFrame | None = None,
    *,
    excluded_authors: tuple[str, ...] = (),
    min_posts: int = 1,
    positive_at: float = POSITIVE_AT,
    negative_at: float = NEGATIVE_AT,
) -> pl.LazyFrame:
    """Per UTC day: post volume, mean compound, follower-weighted mean (over posts whose author's
    follower count is known; null when none is), post label shares, unique authors and the share
    of authors whose mean is POSITIVE / NEGATIVE. Excluded authors are left out of everything."""
    excluded = [a.lower() for a in excluded_authors]
    s = (
        _with_followers(sentiment, posts)
        .with_columns(pl.col("created_at").dt.date().alias("date"))
        .filter(~pl.col("author_username").str.to_lowercase().is_in(excluded).fill_null(False))
        .with_columns(label_from_score(pl.col("compound"), positive_at, negative_at).alias("post_label"))
    )
    w = pl.col("author_followers").cast(pl.Float64)
    known = pl.col("compound").filter(w.is_not_null())
    daily = s.group_by("date").agg(
        pl.len().alias("post_count"),
        pl.col("compound").mean().alias("sentiment_mean"),
        pl.when(w.filter(w.is_not_null()).sum() > 0)
        .then((known * w.filter(w.is_not_null())).sum() / w.filter(w.is_not_null()).sum())
        .otherwise(None).alias("sentiment_follower_weighted_mean"),
        (pl.col("post_label") == "POSITIVE").mean().alias("post_positive_share"),
        (pl.col("post_label") == "NEGATIVE").mean().alias("post_negative_share"),
    )
    authors = (
        author_sentiment(sentiment, posts, excluded_authors=excluded_authors, min_posts=min_posts,
                         positive_at=positive_at, negative_at=negative_at)
        .group_by("date")
        .agg(
            pl.len().alias("unique_authors"),
            (pl.col("author_label") == "POSITIVE").mean().alias("author_positive_share"),
            (pl.col("author_label") == "NEGATIVE").mean().alias("author_negative_share"),
        )
    )
    return (daily.join(authors, on="date", how="left")
            .with_columns(pl.col("unique_authors").fill_null(0).cast(pl.UInt32))
            .sort("date"))
