"""Evaluation metrics on predictions: accuracy, macro-F1, MCC, the confusion matrix, per-class report,
regression errors and paired bootstrap intervals (one resampling loop, ``paired_bootstrap``, for all of
them). The backtest and the signal metrics are in ``signal``.

Pure functions of truth and predictions (no models, no files). Classes are always scored over all of
``LABELS``, so a class a model never predicts still counts in its macro-F1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.core.labelset import LABELS
from tasks.evaluation.verdict import collapse


@dataclass(frozen=True)
class Scores:
    accuracy: float
    macro_f1: float
    mcc: float
    n: int
    predicted_share: dict[str, float]

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_accuracy": self.accuracy, f"{prefix}_macro_f1": self.macro_f1, f"{prefix}_mcc": self.mcc}


def score(y_true: Sequence[str], y_pred: Sequence[str]) -> Scores:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    counts = Counter(y_pred)
    return Scores(
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=list(LABELS), average="macro", zero_division=0)),
        mcc=float(matthews_corrcoef(y_true, y_pred)) if len(set(y_true) | set(y_pred)) > 1 else 0.0,
        n=len(y_true),
        predicted_share={lab: counts.get(lab, 0) / max(1, len(y_pred)) for lab in LABELS},
    )


def confusion(y_true: Sequence[str], y_pred: Sequence[str]) -> np.ndarray:
    """Counts, rows = actual, columns = predicted, both in ``LABELS`` order."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(LABELS))


def class_report(y_true: Sequence[str], y_pred: Sequence[str]) -> list[dict[str, Any]]:
    from sklearn.metrics import classification_report

    rep = classification_report(y_true, y_pred, labels=list(LABELS), output_dict=True, zero_division=0)
    return [{"class": k, **{m: round(float(v), 4) for m, v in vals.items()}} for k, vals in rep.items() if isinstance(vals, dict)]


def paired_bootstrap(statistic: Callable[[np.ndarray], float], n: int, *, resamples: int = 2000, seed: int = 42,
                     level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of ``statistic`` over ``resamples`` paired resamples of ``n`` rows.

    ``statistic`` takes the row indices of one resample (the same rows for every model it compares, so
    the interval is of a paired quantity); the point value is ``statistic(np.arange(n))``. One loop for
    every interval in the evaluation: macro-F1 differences, MCC, MAE differences, the IC."""
    rng = np.random.default_rng(seed)
    boots = np.empty(resamples)
    for i in range(resamples):
        boots[i] = statistic(rng.integers(0, n, n))
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _codes(y: Sequence[str]) -> np.ndarray:
    """Labels as their index in ``LABELS`` (any other label: one extra code)."""
    index = {lab: i for i, lab in enumerate(LABELS)}
    return np.array([index.get(v, len(LABELS)) for v in y], dtype=np.int64)


def _counts(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Confusion counts of coded labels, rows = actual (the extra code last)."""
    k = len(LABELS) + 1
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _macro_f1(c: np.ndarray) -> float:
    """scikit-learn's macro-F1 over ``LABELS`` (zero_division=0) from confusion counts, in its arithmetic:
    2 tp / (true + predicted) per class, then the mean."""
    n = len(LABELS)
    tp, true_sum, pred_sum = np.diag(c)[:n].astype(float), c.sum(axis=1)[:n].astype(float), c.sum(axis=0)[:n].astype(float)
    denom = true_sum + pred_sum
    return float(np.mean(np.divide(2 * tp, denom, out=np.zeros(n), where=denom > 0)))


def _mcc(c: np.ndarray) -> float:
    """scikit-learn's multi-class MCC from confusion counts, in its arithmetic (0 when either side is constant)."""
    t_sum, p_sum = c.sum(axis=1, dtype=np.float64), c.sum(axis=0, dtype=np.float64)
    n_correct, n = np.trace(c, dtype=np.float64), p_sum.sum()
    cov_ytyp = n_correct * n - np.dot(t_sum, p_sum)
    cov_ypyp_ytyt = (n**2 - np.dot(p_sum, p_sum)) * (n**2 - np.dot(t_sum, t_sum))
    return 0.0 if cov_ypyp_ytyt == 0 else float(cov_ytyp / np.sqrt(cov_ypyp_ytyt))


def bootstrap_f1_difference(y_true: Sequence[str], pred_a: Sequence[str], pred_b: Sequence[str], *,
                            resamples: int = 2000, seed: int = 42, level: float = 0.95) -> tuple[float, float, float]:
    """Paired bootstrap of macro-F1(a) - macro-F1(b) over the same days: (point, low, high)."""
    t, a, b = _codes(y_true), _codes(pred_a), _codes(pred_b)

    def difference(idx: np.ndarray) -> float:
        return _macro_f1(_counts(t[idx], a[idx])) - _macro_f1(_counts(t[idx], b[idx]))

    lo, hi = paired_bootstrap(difference, len(t), resamples=resamples, seed=seed, level=level)
    return float(difference(np.arange(len(t)))), lo, hi


def bootstrap_mcc(y_true: Sequence[str], y_pred: Sequence[str], *, resamples: int = 2000, seed: int = 42,
                  level: float = 0.95) -> tuple[float, float, float]:
    """MCC and its bootstrap interval over the same rows: (point, low, high)."""
    t, p = _codes(y_true), _codes(y_pred)
    lo, hi = paired_bootstrap(lambda idx: _mcc(_counts(t[idx], p[idx])), len(t), resamples=resamples, seed=seed, level=level)
    return _mcc(_counts(t, p)), lo, hi


def true_share(y_true: Sequence[str]) -> dict[str, float]:
    counts = Counter(y_true)
    return {lab: counts.get(lab, 0) / max(1, len(y_true)) for lab in LABELS}


def collapse_warning(name: str, s: Scores, y_true: Sequence[str] | None = None, unit: str = "days") -> str | None:
    """A warning when predictions collapsed (the rule of tasks.evaluation.verdict: one class dominating, or a
    class common in the truth never predicted)."""
    why = collapse(s.predicted_share, true_share(y_true) if y_true is not None else {})
    return None if why is None else f"{name} {why} (on {s.n} {unit}): its predictions have collapsed"


# ----------------------------------------------------------------------------- numbers
def regression_scores(y_true: Sequence[float], y_pred: Sequence[float], reference: Sequence[float] | None = None) -> dict[str, float]:
    """MAE, R2 and directional accuracy (sign of the move vs ``reference``: 0 for returns, the last value otherwise)."""
    from sklearn.metrics import mean_absolute_error, r2_score

    t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    ref = np.zeros_like(t) if reference is None else np.asarray(reference, float)
    return {"mae": float(mean_absolute_error(t, p)), "r2": float(r2_score(t, p)) if len(t) > 1 else float("nan"),
            "directional_accuracy": float(np.mean(np.sign(t - ref) == np.sign(p - ref)))}


def bootstrap_mae_difference(y_true, pred_a, pred_b, *, resamples: int = 2000, seed: int = 42) -> tuple[float, float, float]:
    """Paired bootstrap of MAE(b) - MAE(a): positive when a is better."""
    t, a, b = (np.asarray(x, float) for x in (y_true, pred_a, pred_b))
    err = np.abs(b - t) - np.abs(a - t)
    lo, hi = paired_bootstrap(lambda idx: err[idx].mean(), len(t), resamples=resamples, seed=seed)
    return float(err.mean()), lo, hi
