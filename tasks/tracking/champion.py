"""The champion policy, stated once: which runs compete for the ``champion`` alias of the registered
model and when it moves.

- Only direction-task runs with a registered version compete: ``predict`` serves that task's signal.
- A candidate takes the alias only if its validation macro-F1 beats the best baseline's (chosen on
  validation) AND the current champion's, all on the same validation split: the champion is re-scored
  on the candidate's dataset version, so a champion trained on an older version is judged on the newest.
- The decision is returned and set as ``champion_*`` tags on the candidate's model version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def candidate_scores(report: dict[str, Any]) -> tuple[float, float]:
    """(the candidate's score, the best baseline's score) from an evaluation report, both on validation."""
    return report["metrics"][METRIC], report["baselines"][report["best_baseline"]][METRIC]


def _decide(decision: dict[str, Any], metric: str, current_version: str | None) -> None:
    """Fill ``promoted`` and ``reason`` from the scores in ``decision``."""
    score, best_baseline_score, champion_score = decision["score"], decision["best_baseline_score"], decision["champion_score"]
    if not score > best_baseline_score:
        decision["reason"] = f"{metric} {score:.4f} does not beat the best baseline ({best_baseline_score:.4f})"
    elif champion_score is not None and not score > champion_score:
        decision["reason"] = f"{metric} {score:.4f} does not beat champion v{current_version} ({champion_score:.4f})"
    else:
        decision.update(promoted=True, reason=f"{metric} {score:.4f} beats the best baseline ({best_baseline_score:.4f})"
                        + ("" if current_version is None else f" and champion v{current_version} ({champion_score:.4f})"))


def promote_if_better(tracker: MlflowTracker, version: str, score: float, best_baseline_score: float,
                      champion_score: Callable[[Any], float] | None = None, metric: str = METRIC) -> dict[str, Any]:
    """Move ``champion`` to ``version`` only if its ``score`` beats the best baseline AND the
    current champion, all on the same validation split. ``champion_score(model_version)``
    re-scores the current champion on that split (so a champion trained on an older dataset
    version is judged on the newest one). Returns the decision, also set as version tags."""
    current = tracker.champion()
    decision: dict[str, Any] = {"version": version, "metric": metric, "score": score,
                                "best_baseline_score": best_baseline_score, "previous_champion": None,
                                "champion_score": None, "promoted": False}
    if current is not None and str(current.version) == str(version):
        decision.update(previous_champion=str(version), reason="already the champion")
        return decision
    if current is not None:
        decision["previous_champion"] = str(current.version)
        if champion_score is None:
            raise ValueError("a champion exists: promote_if_better needs champion_score to re-score it")
        decision["champion_score"] = float(champion_score(current))
    _decide(decision, metric, None if current is None else current.version)
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
