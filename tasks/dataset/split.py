"""Chronological splits with an embargo: train | embargo | validation | embargo | test, in time order.

No day is in two splits; the embargo days between them are dropped so that a label (the next day's
move) never reaches across a boundary. The newest day, whose label is not known yet, is ``predict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import polars as pl

from tasks.core.errors import InputError

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitPlan:
    train: tuple[date, date]
    validation: tuple[date, date]
    test: tuple[date, date]
    embargo_days: int


def plan_splits(days: list[date], validation_fraction: float, test_fraction: float, embargo_days: int,
                starts: tuple[date, date] | None = None) -> SplitPlan:
    """Chronological split of labelled days with ``embargo_days`` dropped before val and test: the last
    fractions of the days, or (``starts``) validation from its first day and test from its first day."""
    days = sorted(days)
    if starts is not None:
        return _split_at(days, *starts, embargo_days)
    n = len(days)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * validation_fraction))
    n_train = n - n_test - n_val - 2 * embargo_days
    if n_train < 3:
        raise InputError(f"only {n} labelled days: too few for train/validation/test with an embargo of {embargo_days}")
    test = days[n - n_test:]
    val = days[n - n_test - embargo_days - n_val: n - n_test - embargo_days]
    train = days[:n_train]
    return SplitPlan((train[0], train[-1]), (val[0], val[-1]), (test[0], test[-1]), embargo_days)


def _split_at(days: list[date], validation_start: date, test_start: date, embargo_days: int) -> SplitPlan:
    """Train before ``validation_start`` (its last ``embargo_days`` dropped), validation from it up to
    ``test_start`` (the same embargo), test from ``test_start`` on."""
    train = [d for d in days if d < validation_start]
    val = [d for d in days if validation_start <= d < test_start]
    test = [d for d in days if d >= test_start]
    train, val = train[:len(train) - embargo_days], val[:len(val) - embargo_days]
    if len(train) < 3 or not val or not test:
        raise InputError(f"the labelled days {days[0] if days else '-'}..{days[-1] if days else '-'} leave "
                         f"{max(len(train), 0)} train, {max(len(val), 0)} validation and {len(test)} test days with "
                         f"dataset.validation_start {validation_start} and dataset.test_start {test_start}: "
                         "each split needs days (train at least 3)")
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
