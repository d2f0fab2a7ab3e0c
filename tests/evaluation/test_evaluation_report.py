"""The evaluation report a person reads: the signal metrics next to macro-F1 and MCC, each with what it
means, and built so that a bad signal reads as one (a random forecast's IC 'includes 0', costs that turn
a gross gain into a net loss, probabilities worse than the base rates)."""

import numpy as np
import pytest

from tasks.evaluation.metrics import score
from tasks.evaluation.report import MEANINGS, class_table, evaluation_markdown, signal_metrics
from tasks.evaluation.signal import signal_scores

LABELS = ("NEGATIVE", "NEUTRAL", "POSITIVE")


@pytest.fixture(scope="module")
def case():
    """120 test days: LoRA with random probabilities and a call that is mostly right but changes nearly
    daily; persistence without probabilities; the logistic regression confidently wrong."""
    rng = np.random.default_rng(11)
    returns = np.tile([0.0015, -0.0015], 60) + rng.normal(0, 0.0003, 120)  # as in test_evaluation_signal
    truth = ["POSITIVE" if r > 0 else "NEGATIVE" for r in returns]
    calls = [t if rng.uniform() < 0.85 else "NEUTRAL" for t in truth]  # right, but turning nearly daily
    lora_probs = rng.dirichlet([1, 1, 1], 120)
    wrong = np.array([[0.98 if lab == LABELS[(LABELS.index(y) + 1) % 3] else 0.01 for lab in LABELS] for y in truth])
    preds = {"lora": calls, "persistence": [truth[0], *truth[:-1]], "logistic": [LABELS[int(np.argmax(p))] for p in wrong]}
    probs = {"lora": lora_probs, "logistic": wrong}
    signal = {n: signal_scores(truth, p, probs.get(n), truth, next_returns=returns, cost_bp=10, seed=0) for n, p in preds.items()}
    results = {n: {sp: score(truth, p) for sp in ("validation", "test")} for n, p in preds.items()}
    return results, signal


def test_the_report_shows_each_signal_metric_with_what_it_means_and_reads_a_bad_signal_as_bad(case):
    results, signal = case
    lora = signal["lora"]
    assert lora["backtest_return_gross"] > 0 > lora["backtest_return_net"]  # the case: costs turn it negative
    assert lora["ic_ci95_low"] <= 0 <= lora["ic_ci95_high"]  # random probabilities
    text = evaluation_markdown("LoRA shows no skill on 120 test days: ...", results, signal, mcc_interval=(-0.05, 0.2),
                               warnings=["lora (test) predicts POSITIVE for 90%"], unit="days", cost_bp=10)
    lines = text.splitlines()
    ic_line = next(line for line in lines if line.startswith("| IC |"))
    assert "includes 0" in ic_line and MEANINGS["IC"] in ic_line
    net_line = next(line for line in lines if line.startswith("| backtest, net of costs |"))
    assert f"{lora['backtest_return_net']:+.1%} (gross {lora['backtest_return_gross']:+.1%}" in net_line
    assert "paying 10 bp per unit of position moved" in net_line
    for name in ("macro-F1", "MCC", "log-loss skill", "Brier skill"):
        assert any(line.startswith(f"| {name} |") and MEANINGS[name] in line for line in lines), name
    logistic = next(line for line in lines if line.startswith("| logistic |"))
    assert f"{signal['logistic']['log_loss_skill']:+.3f}" in logistic and signal["logistic"]["log_loss_skill"] < 0
    persistence = next(line for line in lines if line.startswith("| persistence |"))
    assert persistence.count("no probabilities") == 3  # IC, log-loss skill, Brier skill: said, not left blank
    assert "persistence: a class only, no class probabilities" in text and "- lora (test) predicts POSITIVE" in text


def test_the_run_keeps_a_handful_of_signal_metrics_and_the_table_has_every_models(case):
    results, signal = case
    names = set(signal_metrics(signal["lora"]))
    assert names == {"test_ic", "test_ic_ci95_low", "test_ic_ci95_high", "test_log_loss", "test_log_loss_skill", "test_brier",
                     "test_brier_skill", "test_backtest_return_net", "test_buy_and_hold_return"}
    assert set(signal_metrics(signal["persistence"])) == {"test_backtest_return_net", "test_buy_and_hold_return"}
    assert "test_backtest_return_net" not in signal_metrics(signal["logistic"], backtest=False)  # a reused run: no cost
    rows = {r["model"]: r for r in class_table(results, (), signal)}
    assert rows["persistence"]["test_ic"] is None and rows["lora"]["test_backtest_trades"] == signal["lora"]["backtest_trades"]
