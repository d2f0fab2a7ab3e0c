"""Walk-forward folds (as qlib's rolling tasks): retrain every ``step_days`` on the days before, score the
next ``step_days``, with an embargo between what a fold trains on and what it scores.

Pure: dates in, folds out. ``expanding`` keeps every earlier day in training; otherwise the training
window slides and holds the last ``train_days``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Fold:
    index: int
    train: tuple[date, date]  # first and last training day (inclusive)
    validation: tuple[date, date]  # the last days before the embargo: early stopping and the baseline choice
    test: tuple[date, date]  # the days this fold scores

    def as_dict(self) -> dict[str, str | int]:
        return {"fold": self.index, "train_start": self.train[0].isoformat(), "train_end": self.train[1].isoformat(),
                "validation_start": self.validation[0].isoformat(), "validation_end": self.validation[1].isoformat(),
                "test_start": self.test[0].isoformat(), "test_end": self.test[1].isoformat()}


def walk_forward_folds(days: list[date], *, first_test_day: date, step_days: int, validation_days: int,
                       embargo_days: int, train_days: int | None = None, min_train_days: int = 30) -> list[Fold]:
    """Folds over the labelled ``days`` (sorted, gaps allowed): fold k scores the ``step_days`` labelled days
    from ``first_test_day`` + k steps; it trains on every earlier day (or the last ``train_days``), minus
    an embargo before its validation days and another before its test days, so no label reaches across."""
    days = sorted(days)
    if step_days < 1 or validation_days < 1:
        raise ValueError("step_days and validation_days must be at least 1")
    folds: list[Fold] = []
    start = next((i for i, d in enumerate(days) if d >= first_test_day), len(days))
    for t0 in range(start, len(days), step_days):
        test = days[t0:t0 + step_days]
        val_end = t0 - embargo_days  # exclusive
        val_start = val_end - validation_days
        train_end = val_start - embargo_days  # exclusive
        train_start = 0 if train_days is None else max(0, train_end - train_days)
        if train_end - train_start < min_train_days:
            continue
        folds.append(Fold(len(folds), (days[train_start], days[train_end - 1]), (days[val_start], days[val_end - 1]),
                          (test[0], test[-1])))
    return folds
