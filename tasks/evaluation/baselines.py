"""Honest baselines that see the same splits as LoRA: majority class (of train), persistence (tomorrow's
move = today's), a logistic regression on the same numeric features, the sentiment rule and, for the
sentiment task, the labeller itself as a ceiling. The neural text baseline (BiLSTM) and the voting
ensemble are in ``textbaselines`` (torch at import).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import polars as pl

from tasks.core.labelset import LABELS
from tasks.core.manifests import DatasetManifest
from tasks.social.sentiment import NEGATIVE_AT, POSITIVE_AT


def train_majority(features: pl.DataFrame) -> str:
    """The most common label of the training split."""
    return Counter(features.filter(pl.col("split") == "train")["label"].to_list()).most_common(1)[0][0]


def baseline_predictions(features: pl.DataFrame, numeric_cols: list[str], split: str, seed: int) -> dict[str, list[str]]:
    """Majority, persistence and logistic-regression predictions for the rows of ``split``."""
    return baseline_forecasts(features, numeric_cols, split, seed)[0]


def baseline_forecasts(features: pl.DataFrame, numeric_cols: list[str], split: str, seed: int
                       ) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """The predictions of ``baseline_predictions`` and, for the baselines that have them (the logistic
    regression), the class probabilities in ``LABELS`` order (the class it predicts is their argmax)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = features.filter(pl.col("split") == "train")
    target = features.filter(pl.col("split") == split)
    majority = Counter(train["label"].to_list()).most_common(1)[0][0]
    preds = {"majority": [majority] * target.height}
    preds["persistence"] = [t if t is not None else majority for t in target["today_label"].to_list()]
    medians = train.select(pl.col(numeric_cols).median()).row(0, named=True)

    def matrix(df: pl.DataFrame) -> np.ndarray:
        filled = df.select([pl.col(c).cast(pl.Float64).fill_nan(None).fill_null(medians[c] if medians[c] is not None else 0.0)
                            for c in numeric_cols])
        return filled.to_numpy()

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5, random_state=seed))
    clf.fit(matrix(train), train["label"].to_list())
    x = matrix(target)
    preds["logistic"] = [str(c) for c in clf.predict(x)]
    fitted = [str(c) for c in clf.classes_]  # a class absent from train gets probability 0
    probs = np.zeros((target.height, len(LABELS)))
    probs[:, [LABELS.index(c) for c in fitted]] = clf.predict_proba(x)
    return preds, {"logistic": probs}


def sentiment_rule(features: pl.DataFrame, split: str, fallback: str) -> list[str]:
    """Mean sentiment of the day's posts -> label (VADER thresholds); days without posts: fallback."""
    out = []
    for v in features.filter(pl.col("split") == split).sort("date")["sentiment_mean"].to_list():
        out.append(fallback if v is None else "POSITIVE" if v >= POSITIVE_AT else "NEGATIVE" if v <= NEGATIVE_AT else "NEUTRAL")
    return out


def split_baselines(features: pl.DataFrame, manifest: DatasetManifest, split: str, *, task: str, seed: int,
                    majority: str) -> tuple[dict[str, list[str]], dict[str, np.ndarray], tuple[str, ...]]:
    """The feature-based baselines' predictions for ``split``, the class probabilities of those that have
    them, and which of them are ceilings, not baselines."""
    if task == "direction":
        preds, probs = baseline_forecasts(features, manifest.numeric_features, split, seed)
        if features["sentiment_mean"].is_not_null().any():  # without posts it would be the majority class again
            preds["sentiment_rule"] = sentiment_rule(features, split, majority)
        return preds, probs, ()
    # sentiment: the per-post VADER label is the labeller itself -> a ceiling, not a baseline
    sub = features.filter(pl.col("split") == split)
    return {"majority": [majority] * sub.height, "vader_rule": sub["post_rule_label"].to_list()}, {}, ("vader_rule",)


def number_columns(task: str, manifest: DatasetManifest) -> tuple[Callable[[pl.DataFrame], list[float]],
                                                                  Callable[[pl.DataFrame], list[float]], str | None]:
    """For a number task: the truth of a split's feature rows, the last known value (the persistence
    baseline, and the reference of a move's direction) and the column the rows are ordered by."""
    if task == "return":
        last_return = f"{manifest.target_asset.lower()}_ret_1d"

        def truth(f: pl.DataFrame) -> list[float]:
            return (f["next_day_return"] * 100).to_list()  # percent, as in the records

        def last(f: pl.DataFrame) -> list[float]:
            return (f[last_return].fill_null(0.0) * 100).to_list()

        return truth, last, "date"

    def target(f: pl.DataFrame) -> list[float]:
        return f["target"].to_list()

    def last_value(f: pl.DataFrame) -> list[float]:
        return f["last_log_value"].to_list()

    return target, last_value, None
