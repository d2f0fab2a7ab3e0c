"""What a run keeps (the best validation evaluation, early stopping) and how it weighs its classes."""

from collections import Counter

import pytest
import torch

from tasks.core.settings import TrainSettings
from tasks.training.data import MicroBatches, StepPlan
from tasks.training.selection import Selection, class_weights, macro_f1


def _model_and_scores(scores):
    """A real module whose weight is set to the step number before each evaluation, and a score per evaluation."""
    model = torch.nn.Linear(2, 1)
    model.bias.requires_grad_(False)  # frozen: not part of what is kept
    queue = list(scores)
    return model, (lambda: queue.pop(0))


def _run(cfg, scores, steps_per_epoch=1):
    model, score = _model_and_scores(scores)
    sel = Selection(cfg, steps_per_epoch, len(scores) * steps_per_epoch, score, "val_macro_f1")
    last = 0
    for step in range(1, len(scores) * steps_per_epoch + 1):
        with torch.no_grad():
            model.weight.fill_(step)
        last = step
        if sel.due(step) and sel.update(step, model):
            break
    return model, sel, last


def test_the_best_evaluation_is_kept_not_the_last():
    model, sel, last = _run(TrainSettings(early_stopping_patience=0), [0.30, 0.55, 0.41, 0.20])
    assert last == 4 and sel.restore(model) == 2
    assert torch.all(model.weight == 2)  # the weights of step 2, not of step 4
    assert sel.summary() == {"selected_step": 2, "selection_metric": "val_macro_f1", "selection_score": 0.55, "evaluations": 4,
                             "label_adjustment": None}


def test_patience_stops_the_run_after_that_many_evaluations_without_a_better_one():
    _, sel, last = _run(TrainSettings(early_stopping_patience=2), [0.3, 0.5, 0.5, 0.4, 0.9, 0.9])
    assert last == 4 and sel.best_step == 2  # 0.5 again is not better: steps 3 and 4 ran out the patience


def test_select_by_last_keeps_the_last_step_and_never_stops():
    model, sel, last = _run(TrainSettings(select_by="last", early_stopping_patience=1), [0.9, 0.1, 0.1])
    assert last == 3 and sel.restore(model) is None and torch.all(model.weight == 3)


def test_evaluations_fall_once_an_epoch_unless_told_otherwise():
    epoch = Selection(TrainSettings(), 5, 12, lambda: 0.0, "m")
    assert [s for s in range(1, 13) if epoch.due(s)] == [5, 10, 12]  # every epoch and the last step
    every = Selection(TrainSettings(eval_every_steps=3), 5, 12, lambda: 0.0, "m")
    assert [s for s in range(1, 13) if every.due(s)] == [3, 6, 9, 12]


def test_balanced_weights_give_every_class_the_same_total():
    labels = ["POSITIVE"] * 60 + ["NEUTRAL"] * 30 + ["NEGATIVE"] * 10
    w = class_weights(labels)
    totals = Counter()
    for lab in labels:
        totals[lab] += w[lab]
    assert totals["POSITIVE"] == pytest.approx(totals["NEUTRAL"]) == pytest.approx(totals["NEGATIVE"])


def test_balanced_draws_see_every_class_about_equally_and_the_same_each_seed():
    labels = ["POSITIVE"] * 80 + ["NEUTRAL"] * 15 + ["NEGATIVE"] * 5
    examples = [{"input_ids": [i], "labels": [i]} for i in range(len(labels))]
    w = class_weights(labels)
    plan = StepPlan(pack_tokens=0, accum=1, steps_per_epoch=10, total_steps=100, units_per_micro_batch=10)

    def draw(seed):
        batches = MicroBatches(examples, plan, 10, seed, weights=[w[lab] for lab in labels])
        return [labels[e["input_ids"][0]] for _ in range(100) for e in batches.next(0)]

    seen = Counter(draw(7))
    assert all(abs(seen[lab] / 1000 - 1 / 3) < 0.06 for lab in ("POSITIVE", "NEUTRAL", "NEGATIVE")), seen
    assert draw(7) == draw(7) and draw(7) != draw(8)


def test_macro_f1_of_a_one_class_guess_is_low():
    truth = ["POSITIVE"] * 5 + ["NEUTRAL"] * 5 + ["NEGATIVE"] * 5
    assert macro_f1(truth, ["NEUTRAL"] * 15) == pytest.approx(1 / 6)
    assert macro_f1(truth, truth) == 1.0


def test_the_prior_correction_undoes_a_preference_for_one_label_and_keeps_the_ranking():
    """A model that puts POSITIVE first for every input (a collapsed one) but still ranks the inputs: after the
    correction, learned on training inputs with balanced labels, its predicted shares follow the labels' and the
    inputs it ranks highest for a class get that class. A model whose shares already match is left about alone."""
    import numpy as np

    from tasks.training.selection import corrected, predicted_labels, prior_adjustment

    rng = np.random.default_rng(0)
    truth = ["NEGATIVE", "NEUTRAL", "POSITIVE"] * 100
    signal = np.array([[1.0 if lab == c else 0.0 for c in ("NEGATIVE", "NEUTRAL", "POSITIVE")] for lab in truth])
    collapsed = signal * 0.8 + np.array([0.0, 0.5, 2.0]) + rng.normal(0, 0.3, signal.shape)
    assert Counter(predicted_labels(collapsed))["POSITIVE"] > 0.9 * len(truth)
    fixed = predicted_labels(corrected(collapsed, prior_adjustment(collapsed, truth)))
    shares = Counter(fixed)
    assert all(abs(shares[c] / len(truth) - 1 / 3) < 0.1 for c in ("NEGATIVE", "NEUTRAL", "POSITIVE")), shares
    assert macro_f1(truth, fixed) > 0.6 > macro_f1(truth, predicted_labels(collapsed))
    calibrated = signal * 3 + rng.normal(0, 0.3, signal.shape)
    assert max(abs(a) for a in prior_adjustment(calibrated, truth)) < 0.1
    assert corrected(collapsed, None) is collapsed  # no adjustment recorded: the scores as they are
