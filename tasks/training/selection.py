"""Which weights a run keeps, and how it weighs its classes: shared by both model kinds.

- **Selection** (``train.select_by``): every ``train.eval_every_steps`` optimizer steps (default: once an
  epoch) the run is scored on the validation split (macro-F1 for the class tasks, minus the loss for the
  number tasks); the trainable weights of the best evaluation are kept in memory and put back at the end,
  and ``train.early_stopping_patience`` evaluations without a better one stop the run. A run that only
  learns the majority class (macro-F1 ~0.2 on three classes) therefore keeps an earlier, better state.
- **Class balance** (``train.class_balance``): weights ``n / (k * count)`` from the training labels, so
  every class weighs the same in total; the causal kind draws its examples by them, the encoder weighs its
  loss by them.

Like the rest of tasks/training: no prefect, no mlflow.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.core.labelset import LABELS
from tasks.core.logs import get_logger
from tasks.core.settings import TrainSettings


def is_class_task(records: Sequence[dict[str, Any]]) -> bool:
    return bool(records) and all(r["output"] in LABELS for r in records)


def class_weights(labels: Sequence[str]) -> dict[str, float]:
    """``n / (k * count)`` per class present in ``labels`` (k = classes present): 1.0 each when balanced."""
    counts = Counter(labels)
    return {lab: len(labels) / (len(counts) * c) for lab, c in counts.items()}


def macro_f1(truth: Sequence[str], pred: Sequence[str]) -> float:
    """Macro-F1 over the three labels (a class absent from both counts 0, as in tasks/evaluation/metrics)."""
    from sklearn.metrics import f1_score

    return float(f1_score(list(truth), list(pred), labels=list(LABELS), average="macro", zero_division=0))


def log_softmax(scores: np.ndarray) -> np.ndarray:
    z = np.asarray(scores, dtype=float)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def prior_adjustment(loglik: np.ndarray, labels: Sequence[str]) -> list[float]:
    """Per-label additive correction (LABELS order) of label log-likelihoods that moves the model's average
    predicted class shares on these records to their label frequencies: ``log(prior) - log(mean share)``, the
    prior-shift correction of Saerens et al. (2002). About 0 for a model whose shares already match; for a
    model that prefers one label for every input it removes that preference and keeps how the inputs rank."""
    q = np.exp(log_softmax(loglik)).mean(axis=0).clip(1e-6)
    counts = np.array([sum(lab == c for lab in labels) for c in LABELS], dtype=float)
    prior = (counts + 0.5) / (counts.sum() + 0.5 * len(LABELS))  # smoothed: a label absent from the records stays possible
    return (np.log(prior) - np.log(q)).tolist()


def corrected(loglik: np.ndarray, adjustment: Sequence[float] | None) -> np.ndarray:
    """Label log-likelihoods with the run's prior adjustment applied (normalized first); unchanged without one."""
    return loglik if adjustment is None else log_softmax(loglik) + np.asarray(adjustment)


def predicted_labels(scores: np.ndarray) -> list[str]:
    """Argmax over the label columns (log-likelihoods or logits) as label names."""
    return [LABELS[i] for i in np.asarray(scores).argmax(axis=1)]


@dataclass
class Selection:
    """Scores the model on validation when due, keeps the best trainable weights, says when to stop."""

    cfg: TrainSettings
    steps_per_epoch: int
    total_steps: int
    score: Callable[[], float | tuple[float, dict[str, Any]]]  # higher is better; (score, what goes with those weights)
    metric: str  # what ``score`` measures, for the log: "val_macro_f1" or "-val_loss"
    best: float = -math.inf
    best_step: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)
    best_extra: dict[str, Any] = field(default_factory=dict)  # e.g. the label_adjustment the best weights were scored with
    _best_state: dict[str, Any] | None = None
    _since_best: int = 0

    @property
    def active(self) -> bool:
        return self.cfg.select_by != "last"

    def due(self, step: int) -> bool:
        every = self.cfg.eval_every_steps or self.steps_per_epoch
        return self.active and (step % every == 0 or step == self.total_steps)

    def update(self, step: int, model, training=None) -> bool:
        """Score now; keep ``model``'s trainable weights when best so far; put ``training`` (the module the
        loop runs, e.g. a DDP wrapper; default ``model``) back in train mode. True when the run should stop."""
        out = self.score()
        value, extra = out if isinstance(out, tuple) else (out, {})
        (training or model).train()
        self.history.append((step, value))
        if value > self.best:
            self.best, self.best_step, self._since_best, self.best_extra = value, step, 0, extra
            self._best_state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        else:
            self._since_best += 1
        patience = self.cfg.early_stopping_patience
        get_logger().info("step %d: %s %.4f (best %.4f at step %d)", step, self.metric, value, self.best, self.best_step)
        return bool(patience) and self._since_best >= patience

    def restore(self, model) -> int | None:
        """Put the best weights back; the step they come from (None when nothing was selected)."""
        if self._best_state is None:
            return None
        params = dict(model.named_parameters())
        for name, value in self._best_state.items():
            params[name].data.copy_(value.to(params[name].device))
        return self.best_step

    def logged(self, step: int) -> dict[str, float]:
        """The evaluation made at ``step`` as a metric (``val_macro_f1`` or ``val_loss``), or nothing."""
        if not self.history or self.history[-1][0] != step:
            return {}
        return {self.metric.lstrip("-"): abs(self.history[-1][1])}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, so a resumed run selects as the whole run would have."""
        return {"best": self.best, "best_step": self.best_step, "history": list(self.history),
                "since_best": self._since_best, "best_state": self._best_state, "best_extra": self.best_extra}

    def load_state(self, state: dict[str, Any] | None) -> None:
        if state:
            self.best, self.best_step, self.history = state["best"], state["best_step"], list(state["history"])
            self._since_best, self._best_state = state["since_best"], state["best_state"]
            self.best_extra = state.get("best_extra", {})

    def summary(self) -> dict[str, Any]:
        """What the run's result records about the selection."""
        return {"selected_step": self.best_step if self._best_state is not None else None,
                "selection_metric": self.metric if self.active else "last",
                "selection_score": self.best if self._best_state is not None else None,
                "evaluations": len(self.history), "label_adjustment": self.best_extra.get("label_adjustment")}
