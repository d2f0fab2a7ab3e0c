"""The champion policy, stated once: which runs compete for the ``champion`` alias of the registered
model and when it moves.

- Only direction-task runs with a registered version compete: ``predict`` serves that task's signal.
- A candidate takes the alias only if the verdict rule of :mod:`tasks.evaluation.verdict` says it
  **beats** the baselines on the validation split (the same rule as the run's verdict, which is about
  the test split; the test split never decides anything) AND its validation macro-F1 beats the current
  champion's on the same split: the champion is re-scored on the candidate's dataset version, so a
  champion trained on an older version is judged on the newest.
- The decision is returned and set as ``champion_*`` tags on the candidate's model version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException

if TYPE_CHECKING:
    from tasks.tracking.tracker import MlflowTracker

CHAMPION = "champion"  # the alias predict serves
COMPETING_TASK = "direction"
METRIC = "validation_macro_f1"


def find_champion(client, model_name: str, alias: str = CHAMPION):
    """The model version behind the alias, or None when there is no champion yet."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def competes(run_tags: Mapping[str, str]) -> bool:
    """Whether an evaluated training run (by its MLflow tags) competes for the alias."""
    return bool(run_tags.get("registered_version")) and run_tags.get("task") == COMPETING_TASK


@dataclass(frozen=True)
class Candidate:
    """A run's claim to the alias, all on the validation split."""

    score: float  # its validation macro-F1
    best_baseline_score: float  # the baseline chosen on validation, same split
    beats_baselines: bool  # the verdict rule's outcome on validation is "beats"
    verdict: str  # that verdict's text


def candidate_scores(report: dict[str, Any]) -> Candidate:
    """The candidate as an evaluation report describes it on validation."""
    return Candidate(report["metrics"][METRIC], report["baselines"][report["best_baseline"]][METRIC],
                     report.get("validation_outcome") == "beats", report.get("validation_verdict", ""))


def _decide(decision: dict[str, Any], candidate: Candidate, metric: str, current_version: str | None) -> None:
    """Fill ``promoted`` and ``reason`` from the candidate and the champion's score in ``decision``."""
    score, best_baseline_score, champion_score = decision["score"], decision["best_baseline_score"], decision["champion_score"]
    if not candidate.beats_baselines:
        decision["reason"] = f"on validation it does not beat the baselines ({candidate.verdict})"
    elif champion_score is not None and not score > champion_score:
        decision["reason"] = f"{metric} {score:.4f} does not beat champion v{current_version} ({champion_score:.4f})"
    else:
        decision.update(promoted=True, reason=f"on validation it beats the baselines; {metric} {score:.4f} "
                        f"(best baseline {best_baseline_score:.4f})"
                        + ("" if current_version is None else f" and champion v{current_version} ({champion_score:.4f})"))


def promote_if_better(tracker: MlflowTracker, version: str, candidate: Candidate,
                      champion_score: Callable[[Any], float] | None = None, metric: str = METRIC) -> dict[str, Any]:
    """Move ``champion`` to ``version`` only if the candidate beats the baselines by the verdict rule AND
    the current champion, all on the same validation split. ``champion_score(model_version)``
    re-scores the current champion on that split (so a champion trained on an older dataset
    version is judged on the newest one). Returns the decision, also set as version tags."""
    current = tracker.champion()
    decision: dict[str, Any] = {"version": version, "metric": metric, "score": candidate.score,
                                "best_baseline_score": candidate.best_baseline_score, "previous_champion": None,
                                "champion_score": None, "promoted": False, "split": "validation"}
    if current is not None and str(current.version) == str(version):
        decision.update(previous_champion=str(version), reason="already the champion")
        return decision
    if current is not None:
        decision["previous_champion"] = str(current.version)
        if champion_score is None:
            raise ValueError("a champion exists: promote_if_better needs champion_score to re-score it")
        decision["champion_score"] = float(champion_score(current))
    _decide(decision, candidate, metric, None if current is None else current.version)
    if decision["promoted"]:
        tracker.client.set_registered_model_alias(tracker.registered_model, CHAMPION, str(version))
    for key in ("promoted", "reason", "champion_score", "previous_champion"):
        tracker.client.set_model_version_tag(tracker.registered_model, str(version), f"champion_{key}", str(decision[key]))
    return decision


def promotion_summary(decision: dict[str, Any] | None) -> dict[str, Any]:
    """The flow summary's champion fields: whether the alias moved, and the re-scored champion (None when none)."""
    return {
        "champion_promoted": decision["promoted"] if decision else None,
        "champion_rescored": ({"version": decision["previous_champion"], "validation_macro_f1": decision["champion_score"]}
                              if decision and decision["champion_score"] is not None else None),
    }
