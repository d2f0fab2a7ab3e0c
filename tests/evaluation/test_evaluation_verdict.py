"""The verdict rule on constructed cases that used to mislead: a chosen baseline that collapses on test, a LoRA
worse than persistence, a LoRA that predicts the majority class; and the interval wording at both signs."""

import pytest

from tasks.evaluation.verdict import Comparison, collapse, decide, interval_words

EVEN = {"NEGATIVE": 0.3, "NEUTRAL": 0.4, "POSITIVE": 0.3}
SPREAD = {"NEGATIVE": 0.3, "NEUTRAL": 0.35, "POSITIVE": 0.35}


def run(comparisons, chosen, *, lora_share=SPREAD, mcc=(0.05, 0.2), baseline_shares=None):
    return decide("test", comparisons, chosen, lora_share=lora_share, true_share=EVEN, mcc_interval=mcc,
                  baseline_shares=baseline_shares or {b: SPREAD for b in comparisons}, n=610)


@pytest.mark.parametrize("low, high, words", [(0.02, 0.1, "entirely above 0"), (-0.202, -0.146, "entirely below 0"),
                                              (-0.05, 0.03, "includes 0"), (0.0, 0.04, "includes 0")])
def test_interval_wording_at_both_signs(low, high, words):
    assert interval_words(low, high) == words


def test_a_chosen_baseline_that_collapses_on_test_is_not_enough_to_beat():
    """Issue 24's table: the logistic chosen on validation collapsed on test (0.142); LoRA 0.231 'beat' it while
    significantly worse than persistence (0.350)."""
    comparisons = {"logistic": Comparison("logistic", 0.231, 0.142, 0.04, 0.13),
                   "persistence": Comparison("persistence", 0.231, 0.350, -0.165, -0.071),
                   "majority": Comparison("majority", 0.231, 0.194, 0.01, 0.07)}
    shares = {"logistic": {"NEGATIVE": 0.0, "NEUTRAL": 0.01, "POSITIVE": 0.99}, "persistence": SPREAD, "majority": {"NEUTRAL": 1.0}}
    v = run(comparisons, "logistic", baseline_shares=shares)
    assert v.outcome == "does not beat" and not v.beats
    assert v.strongest == "persistence" and v.worse_than == ("persistence",)
    assert "significantly worse than persistence" in v.text and "strongest baseline on test: persistence" in v.text
    assert v.collapsed_baselines == ("logistic",) and "collapsed baseline(s): logistic" in v.text  # majority: by construction


def test_a_majority_class_lora_has_no_skill_whatever_the_f1():
    comparisons = {"logistic": Comparison("logistic", 0.30, 0.14, 0.05, 0.2)}
    v = run(comparisons, "logistic", lora_share={"NEGATIVE": 0.02, "NEUTRAL": 0.94, "POSITIVE": 0.04})
    assert v.outcome == "no skill" and "collapsed (predicts NEUTRAL for 94%)" in v.text
    never = run(comparisons, "logistic", lora_share={"NEGATIVE": 0.5, "NEUTRAL": 0.5, "POSITIVE": 0.0})
    assert never.outcome == "no skill" and "never predicts POSITIVE" in never.text


def test_an_mcc_interval_that_includes_zero_is_no_skill():
    comparisons = {"logistic": Comparison("logistic", 0.40, 0.30, 0.02, 0.18)}
    v = run(comparisons, "logistic", mcc=(-0.01, 0.12))
    assert v.outcome == "no skill" and "MCC 95% CI [-0.010, +0.120] includes 0" in v.text
    worse = run(comparisons, "logistic", mcc=(-0.468, -0.044))  # worse than chance: no skill, and said so
    assert worse.outcome == "no skill" and "MCC 95% CI [-0.468, -0.044] entirely below 0" in worse.text


def test_beats_only_when_better_than_the_chosen_and_worse_than_none():
    comparisons = {"logistic": Comparison("logistic", 0.42, 0.33, 0.03, 0.15),
                   "persistence": Comparison("persistence", 0.42, 0.40, -0.04, 0.08)}
    v = run(comparisons, "logistic")
    assert v.outcome == "beats" and v.text.startswith("LoRA beats the baselines on 610 test days")
    tied = run({**comparisons, "logistic": Comparison("logistic", 0.42, 0.38, -0.01, 0.1)}, "logistic")
    assert tied.outcome == "does not beat" and "includes 0" in tied.text


def test_collapse_rules():
    assert collapse({"NEUTRAL": 0.8, "POSITIVE": 0.1, "NEGATIVE": 0.1}, EVEN) == "predicts NEUTRAL for 80%"
    assert collapse({"NEUTRAL": 0.6, "POSITIVE": 0.4, "NEGATIVE": 0.0}, EVEN) == "never predicts NEGATIVE"
    assert collapse(SPREAD, EVEN) is None
