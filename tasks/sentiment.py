"""Post sentiment with VADER (a lexicon shipped inside its wheel: no download, no model hub)."""

from __future__ import annotations

from functools import lru_cache

import polars as pl

from tasks.schemas import SENTIMENT

POSITIVE_AT = 0.05  # VADER's documented thresholds on the compound score
NEGATIVE_AT = -0.05


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def score_texts(texts: list[str]) -> list[float]:
    analyzer = _analyzer()
    return [analyzer.polarity_scores(t or "")["compound"] for t in texts]


def label_from_score(score: pl.Expr) -> pl.Expr:
    return (
        pl.when(score >= POSITIVE_AT).then(pl.lit("POSITIVE"))
        .when(score <= NEGATIVE_AT).then(pl.lit("NEGATIVE"))
        .otherwise(pl.lit("NEUTRAL"))
    )


def compute_sentiment(posts: pl.DataFrame) -> pl.DataFrame:
    """posts (POSTS shape) -> one sentiment row per post (SENTIMENT shape)."""
    scores = pl.Series("compound", score_texts(posts["text"].to_list()), dtype=pl.Float64)
    return (
        posts.select("post_id", "source", "created_at", "author_username")
        .with_columns(scores)
        .with_columns(label_from_score(pl.col("compound")).alias("label"))
        .select(list(SENTIMENT))
    )
