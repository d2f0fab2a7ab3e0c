"""Labels: the target's next-day return mapped to NEGATIVE / NEUTRAL / POSITIVE with a dead band.

The thresholds come from the *training* split's quantiles (so train is balanced and nothing from
validation/test leaks into them), unless fixed in settings.
"""

from __future__ import annotations

import polars as pl

from tasks.core.labelset import LABELS
from tasks.dataset.split import SPLITS


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


def format_return_pct(ret: float) -> str:
    """The ``return`` task's label: the next-day return in percent, signed, two decimals."""
    return f"{ret * 100:+.2f}"


def label_counts(frame: pl.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        sub = frame.filter(pl.col("split") == split)
        out[split] = {lab: int((sub["label"] == lab).sum()) for lab in LABELS}
    return out
