"""The one rule that says whether LoRA beats the baselines, used for the run's verdict (on test) and for
champion promotion (on validation), so that the two can never say different things.

On one split, LoRA is compared with every baseline by a paired bootstrap of the macro-F1 difference:

- **no skill** when LoRA's predictions collapse (one class takes ``COLLAPSE_SHARE`` of them, or a class
  that makes up at least ``PRESENT_SHARE`` of the truth is never predicted) or when the 95% interval of
  its MCC does not lie entirely above 0 (it includes 0, or LoRA is worse than chance);
- **beats** when it is significantly better (interval entirely above 0) than the baseline chosen on
  validation and significantly worse (interval entirely below 0) than none;
- **does not beat** otherwise.

The text always names the strongest baseline on the split and every baseline LoRA is significantly
worse than, and says which split it is about. A baseline that collapses is reported as such, except those that
predict one class by construction (``CONSTANT_BASELINES``: the majority class), which would be named on every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

COLLAPSE_SHARE = 0.8  # one class in at least this share of the predictions
PRESENT_SHARE = 0.1  # a class this common in the truth ...
NEVER_SHARE = 0.01  # ... predicted less often than this
CONSTANT_BASELINES = frozenset({"majority"})  # one class by construction: never reported as collapsed

Outcome = Literal["beats", "does not beat", "no skill"]


def interval_words(low: float, high: float) -> str:
    """How a 95% interval of a difference reads: its sign, or that it includes 0."""
    if low > 0:
        return "entirely above 0"
    if high < 0:
        return "entirely below 0"
    return "includes 0"


def collapse(predicted_share: dict[str, float], true_share: dict[str, float]) -> str | None:
    """Why a model's predictions have collapsed, or None."""
    top = max(predicted_share, key=predicted_share.get)
    if predicted_share[top] >= COLLAPSE_SHARE:
        return f"predicts {top} for {predicted_share[top]:.0%}"
    never = [c for c, s in true_share.items() if s >= PRESENT_SHARE and predicted_share.get(c, 0.0) < NEVER_SHARE]
    if never:
        return f"never predicts {', '.join(never)}"
    return None


@dataclass(frozen=True)
class Comparison:
    """LoRA against one baseline on one split: macro-F1 of each and the paired bootstrap interval of the difference."""

    baseline: str
    lora_f1: float
    baseline_f1: float
    low: float
    high: float

    @property
    def difference(self) -> float:
        return self.lora_f1 - self.baseline_f1


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    text: str
    split: str
    chosen: str  # the baseline chosen on validation
    strongest: str  # the strongest baseline on this split
    worse_than: tuple[str, ...] = ()
    collapsed_baselines: tuple[str, ...] = field(default_factory=tuple)

    @property
    def beats(self) -> bool:
        return self.outcome == "beats"


def decide(split: str, comparisons: dict[str, Comparison], chosen: str, *, lora_share: dict[str, float],
           true_share: dict[str, float], mcc_interval: tuple[float, float], baseline_shares: dict[str, dict[str, float]],
           n: int, unit: str = "days", ceilings: Sequence[str] = ()) -> Verdict:
    """The rule above, on ``split``; ``ceilings`` (e.g. the labeller itself) are reported, never compared."""
    strongest = max(comparisons, key=lambda b: comparisons[b].baseline_f1)
    worse_than = tuple(b for b, c in comparisons.items() if c.high < 0)
    collapsed = tuple(b for b in comparisons
                      if b not in CONSTANT_BASELINES and collapse(baseline_shares.get(b, {}), true_share))
    lora_collapse = collapse(lora_share, true_share)
    mcc_lo, mcc_hi = mcc_interval
    c = comparisons[chosen]
    if lora_collapse or mcc_lo <= 0:
        outcome: Outcome = "no skill"
        why = (f"its predictions collapsed ({lora_collapse})" if lora_collapse
               else f"its MCC 95% CI [{mcc_lo:+.3f}, {mcc_hi:+.3f}] {interval_words(mcc_lo, mcc_hi)}")
        head = f"LoRA shows no skill on {n} {split} {unit}: {why}"
    else:
        outcome = "beats" if c.low > 0 and not worse_than else "does not beat"
        head = f"LoRA {outcome} the baselines on {n} {split} {unit}"
    text = (f"{head}; against {chosen} (chosen on validation): macro-F1 {c.lora_f1:.3f} vs {c.baseline_f1:.3f}, "
            f"difference 95% CI [{c.low:+.3f}, {c.high:+.3f}] {interval_words(c.low, c.high)}")
    s = comparisons[strongest]
    text += (f"; strongest baseline on {split}: {strongest} ({s.baseline_f1:.3f}, "
             f"difference CI [{s.low:+.3f}, {s.high:+.3f}] {interval_words(s.low, s.high)})")
    if worse_than:
        text += f"; significantly worse than {', '.join(worse_than)}"
    if collapsed:
        text += f"; collapsed baseline(s): {', '.join(collapsed)}"
    for name in ceilings:
        text += f"; {name} is the labeller itself (a ceiling, not a baseline)"
    return Verdict(outcome, text, split, chosen, strongest, worse_than, collapsed)
