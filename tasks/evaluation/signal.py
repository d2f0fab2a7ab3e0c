"""Signal metrics a quant reads next to macro-F1: the information coefficient, proper scores against
the training-frequency forecast, calibration, and a backtest that pays for its trades.

Pure functions on arrays: no IO, no clock. Probabilities are per class in ``LABELS`` order
(NEGATIVE, NEUTRAL, POSITIVE).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tasks.core.labelset import LABELS
from tasks.evaluation.metrics import paired_bootstrap


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation with tied values sharing their average rank (a constant has none: 0)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if np.std(ra) == 0 or np.std(rb) == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def information_coefficient(probs: np.ndarray, next_returns: Sequence[float], *, resamples: int = 2000, seed: int = 42
                            ) -> tuple[float, float, float]:
    """Spearman rank correlation of P(up) - P(down) with the next day's return, and its paired
    bootstrap 95% interval: (ic, low, high). A constant score has IC 0."""
    score = np.asarray(probs, float)[:, LABELS.index("POSITIVE")] - np.asarray(probs, float)[:, LABELS.index("NEGATIVE")]
    r = np.asarray(next_returns, float)
    lo, hi = paired_bootstrap(lambda idx: _spearman(score[idx], r[idx]), len(r), resamples=resamples, seed=seed)
    return _spearman(score, r), lo, hi


def class_frequencies(train_labels: Sequence[str]) -> np.ndarray:
    """The climatological forecast: each class's share in the training split (a floor of 1e-6)."""
    counts = np.array([sum(1 for y in train_labels if y == lab) for lab in LABELS], float)
    return np.maximum(counts / max(1.0, counts.sum()), 1e-6)


def _onehot(y_true: Sequence[str]) -> np.ndarray:
    return np.array([[1.0 if y == lab else 0.0 for lab in LABELS] for y in y_true])


def log_loss(y_true: Sequence[str], probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, float), 1e-12, 1.0)
    return float(-np.mean(np.sum(_onehot(y_true) * np.log(p), axis=1)))


def brier(y_true: Sequence[str], probs: np.ndarray) -> float:
    """Multi-class Brier score: mean squared distance to the one-hot outcome (0 perfect, 2 worst)."""
    return float(np.mean(np.sum((np.asarray(probs, float) - _onehot(y_true)) ** 2, axis=1)))


def proper_scores(y_true: Sequence[str], probs: np.ndarray, train_labels: Sequence[str]) -> dict[str, float]:
    """Log loss and Brier of the model and of the training-frequency forecast, and the skill scores
    (1 - model / reference: > 0 means the probabilities carry information beyond the base rates)."""
    ref = np.tile(class_frequencies(train_labels), (len(y_true), 1))
    out = {"log_loss": log_loss(y_true, probs), "brier": brier(y_true, probs),
           "log_loss_reference": log_loss(y_true, ref), "brier_reference": brier(y_true, ref)}
    out["log_loss_skill"] = 1 - out["log_loss"] / out["log_loss_reference"]
    out["brier_skill"] = 1 - out["brier"] / out["brier_reference"]
    return out


def reliability(y_true: Sequence[str], probs: np.ndarray, bins: int = 5) -> list[dict[str, Any]]:
    """Per class and probability bin: mean forecast probability vs observed frequency (and count)."""
    p, y = np.asarray(probs, float), _onehot(y_true)
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for k, lab in enumerate(LABELS):
        which = np.clip(np.digitize(p[:, k], edges[1:-1]), 0, bins - 1)
        for b in range(bins):
            sel = which == b
            if sel.any():
                rows.append({"class": lab, "bin": b, "forecast": float(p[sel, k].mean()),
                             "observed": float(y[sel, k].mean()), "n": int(sel.sum())})
    return rows


def backtest_with_costs(next_returns: Sequence[float], predicted: Sequence[str], cost_per_trade: float
                        ) -> dict[str, np.ndarray | float | int]:
    """Long on POSITIVE, short on NEGATIVE, flat on NEUTRAL, each day's position held over the next day;
    every change of position pays ``cost_per_trade`` (a fraction: 0.001 = 10 bp) per unit moved.
    Returns the growth curves of the strategy (net of costs, and gross) and of buy-and-hold, the trades and
    the total cost. The evaluation's one backtest."""
    r = np.asarray(next_returns, float)
    pos = np.array([1.0 if p == "POSITIVE" else -1.0 if p == "NEGATIVE" else 0.0 for p in predicted])
    moved = np.abs(np.diff(np.concatenate([[0.0], pos])))
    daily = pos * r - cost_per_trade * moved
    return {"strategy": np.cumprod(1 + daily), "strategy_gross": np.cumprod(1 + pos * r), "buy_and_hold": np.cumprod(1 + r),
            "trades": int((moved > 0).sum()), "cost_paid": float(cost_per_trade * moved.sum())}


def in_label_order(probs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Probability columns given in ``labels`` order, rearranged into ``LABELS`` order."""
    p = np.asarray(probs, float)
    return p[:, [list(labels).index(lab) for lab in LABELS]]


def signal_scores(y_true: Sequence[str], predicted: Sequence[str], probs: np.ndarray | None, train_labels: Sequence[str], *,
                  next_returns: Sequence[float] | None, cost_bp: float, seed: int) -> dict[str, Any]:
    """One model's signal metrics on one split: the IC with its 95% interval, log loss and Brier with their
    skill against the training-frequency forecast (None without class probabilities), and the backtest at
    ``cost_bp`` basis points per unit moved (None without next-day returns, e.g. the sentiment task)."""
    out: dict[str, Any] = dict.fromkeys(("ic", "ic_ci95_low", "ic_ci95_high", "log_loss", "log_loss_reference",
                                         "log_loss_skill", "brier", "brier_reference", "brier_skill", "backtest_return_net",
                                         "backtest_return_gross", "buy_and_hold_return", "backtest_trades"))
    out["has_probabilities"] = probs is not None
    if probs is not None:
        ps = proper_scores(y_true, probs, train_labels)
        out.update(ps)
        if next_returns is not None:
            out["ic"], out["ic_ci95_low"], out["ic_ci95_high"] = information_coefficient(probs, next_returns, seed=seed)
    if next_returns is not None:
        bt = backtest_with_costs(next_returns, predicted, cost_bp / 1e4)
        out.update(backtest_return_net=float(bt["strategy"][-1] - 1), backtest_return_gross=float(bt["strategy_gross"][-1] - 1),
                   buy_and_hold_return=float(bt["buy_and_hold"][-1] - 1), backtest_trades=bt["trades"])
    return out
