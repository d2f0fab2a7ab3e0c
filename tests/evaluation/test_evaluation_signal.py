"""Signal metrics on hand-built cases whose answer is known: a perfect ranking, a constant score, the base
rates as a forecast, a calibrated forecaster, and a backtest whose trades and costs can be counted."""

import numpy as np
import pytest

from tasks.evaluation.signal import backtest_with_costs, class_frequencies, information_coefficient, proper_scores, reliability


def probs_from_score(score):
    """P(down), P(neutral), P(up) whose P(up) - P(down) rises with ``score`` (in [-1, 1])."""
    s = np.asarray(score, float)
    return np.stack([0.4 * (1 - s), np.full_like(s, 0.2), 0.4 * (1 + s)], axis=1)


def test_ic_is_one_for_a_perfect_ranking_and_zero_for_a_constant():
    returns = np.linspace(-0.05, 0.05, 60)
    ic, lo, hi = information_coefficient(probs_from_score(returns * 10), returns)
    assert ic == pytest.approx(1.0) and lo > 0.9
    flat, lo, hi = information_coefficient(probs_from_score(np.zeros(60)), returns)
    assert flat == 0.0 and lo <= 0 <= hi


def test_the_base_rates_have_no_skill_and_a_sharper_right_forecast_has_some():
    rng = np.random.default_rng(0)
    train = list(rng.choice(["NEGATIVE", "NEUTRAL", "POSITIVE"], size=300, p=[0.3, 0.4, 0.3]))
    test = list(rng.choice(["NEGATIVE", "NEUTRAL", "POSITIVE"], size=200, p=[0.3, 0.4, 0.3]))
    base = np.tile(class_frequencies(train), (len(test), 1))
    s = proper_scores(test, base, train)
    assert s["log_loss_skill"] == pytest.approx(0.0) and s["brier_skill"] == pytest.approx(0.0)
    sharp = np.array([[0.9 if lab == y else 0.05 for lab in ("NEGATIVE", "NEUTRAL", "POSITIVE")] for y in test])
    good = proper_scores(test, sharp, train)
    assert good["log_loss_skill"] > 0.5 and good["brier_skill"] > 0.5


def test_reliability_of_a_calibrated_forecaster_sits_on_the_diagonal():
    rng = np.random.default_rng(1)
    p_up = rng.uniform(0, 1, 20000)
    y = ["POSITIVE" if rng.uniform() < p else "NEGATIVE" for p in p_up]
    probs = np.stack([1 - p_up, np.zeros_like(p_up), p_up], axis=1)
    rows = [r for r in reliability(y, probs, bins=5) if r["class"] == "POSITIVE"]
    assert len(rows) == 5 and all(abs(r["forecast"] - r["observed"]) < 0.03 for r in rows)


def test_the_backtest_pays_for_every_change_of_position():
    returns = [0.01, -0.02, 0.03, 0.0]
    out = backtest_with_costs(returns, ["POSITIVE", "NEGATIVE", "NEGATIVE", "NEUTRAL"], cost_per_trade=0.001)
    # positions 1, -1, -1, 0: moves of 1, 2, 0, 1 -> 3 trades, 4 units of cost
    assert out["trades"] == 3 and out["cost_paid"] == pytest.approx(0.004)
    expected = np.cumprod([1 + 0.01 - 0.001, 1 + 0.02 - 0.002, 1 - 0.03, 1 - 0.001])
    assert np.allclose(out["strategy"], expected)
    assert np.allclose(out["buy_and_hold"], np.cumprod(1 + np.array(returns)))


# ----------------------------------------------------------------------------- cases built to make a conclusion false
LABELS = ("NEGATIVE", "NEUTRAL", "POSITIVE")


def classes_of(returns, band=0.005):
    return ["POSITIVE" if r > band else "NEGATIVE" if r < -band else "NEUTRAL" for r in returns]


def test_the_ic_interval_includes_0_for_random_forecasts_and_excludes_it_for_one_built_from_the_truth():
    rng = np.random.default_rng(7)
    returns = rng.normal(0, 0.03, 150)
    excluded = 0
    for _ in range(20):  # a 95% interval of a forecast with no information: 0 inside it ~19 times in 20
        _, lo, hi = information_coefficient(rng.dirichlet([1, 1, 1], 150), returns, resamples=300, seed=int(rng.integers(1e6)))
        excluded += not lo <= 0 <= hi
    assert excluded <= 3
    noisy_truth = np.tanh(returns / 0.03 + rng.normal(0, 1.0, 150))  # the truth, half drowned in noise
    ic, lo, hi = information_coefficient(probs_from_score(noisy_truth), returns, resamples=300)
    assert lo > 0.3 and lo < ic < hi  # the same days, now a signal: the interval is entirely above 0
    ic, lo, hi = information_coefficient(probs_from_score(-noisy_truth), returns, resamples=300)
    assert hi < -0.3  # the same forecast read backwards: entirely below 0


def test_a_cost_per_trade_turns_a_positive_gross_backtest_negative():
    from tasks.evaluation.signal import signal_scores

    rng = np.random.default_rng(3)
    # ETH up or down 0.15% (+ noise) on alternate days and a forecast right on 85% of them: it turns from
    # long to short nearly every day, 2 units of position, 20 bp at 10 bp a unit, more than its edge
    returns = np.tile([0.0015, -0.0015], 60) + rng.normal(0, 0.0003, 120)
    truth = classes_of(returns, band=0.0)
    calls = [t if rng.uniform() < 0.85 else "NEUTRAL" for t in truth]
    free = signal_scores(truth, calls, None, truth, next_returns=returns, cost_bp=0, seed=0)
    paid = signal_scores(truth, calls, None, truth, next_returns=returns, cost_bp=10, seed=0)
    assert free["backtest_return_gross"] > 0.1 and free["backtest_return_net"] == pytest.approx(free["backtest_return_gross"])
    assert paid["backtest_return_gross"] == free["backtest_return_gross"] and paid["backtest_return_net"] < -0.02
    assert paid["backtest_trades"] > 100
    assert paid["ic"] is None and paid["log_loss"] is None  # no probabilities: no IC, no proper scores


def test_a_confidently_wrong_forecast_has_negative_skill():
    rng = np.random.default_rng(4)
    truth = list(rng.choice(LABELS, 200))
    wrong = np.array([[0.01 if lab == y else 0.98 if lab == LABELS[(LABELS.index(y) + 1) % 3] else 0.01 for lab in LABELS]
                      for y in truth])
    s = proper_scores(truth, wrong, truth)
    assert s["log_loss_skill"] < -1 and s["brier_skill"] < -0.5  # far worse than the base rates
    assert s["log_loss"] > s["log_loss_reference"]
