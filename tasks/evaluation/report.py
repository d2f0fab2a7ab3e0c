"""What an evaluation hands back: the metric names, the comparison table, the one-line verdict and the
report dict the evaluate flow logs (``metrics``, ``table``, ``plots``, ``warnings``, ``verdict``,
``best_baseline``, ``report``, ``baselines``, ``predictions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.evaluation.metrics import Scores
from tasks.evaluation.verdict import Verdict, interval_words

SPLITS = ("validation", "test")  # the baseline is chosen on the first, the verdict is about the second


# ----------------------------------------------------------------------------- classes
def class_metrics(results: dict[str, dict[str, Scores]], bilstm_params: int, bilstm_peak_mb: float) -> dict[str, float]:
    """Every model's scores under its MLflow metric name: LoRA's unprefixed, the others' prefixed."""
    metrics: dict[str, float] = {"baseline_bilstm_trainable_params": bilstm_params,
                                 "baseline_bilstm_peak_memory_mb": bilstm_peak_mb}
    for name, per_split in results.items():
        prefix = "" if name == "lora" else "ensemble_" if name == "ensemble" else f"baseline_{name}_"
        for split, sc in per_split.items():
            metrics.update({f"{prefix}{k}": v for k, v in sc.as_metrics(split).items()})
    return metrics


def class_verdict(verdict: Verdict, results: dict[str, dict[str, Scores]], *, ceilings: tuple[str, ...]) -> str:
    """The test split's verdict (tasks.evaluation.verdict's rule), with the labeller's ceiling where there is one."""
    verdict = verdict.text
    if ceilings:
        verdict += "; " + ", ".join(f"{c} (the labeller, a ceiling) {results[c]['test'].macro_f1:.3f}" for c in sorted(ceilings))
    return verdict


def class_table(results: dict[str, dict[str, Scores]], ceilings: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"model": n + (" (ceiling)" if n in ceilings else ""),
         **{f"{sp}_{k}": round(getattr(results[n][sp], k), 4) for sp in SPLITS for k in ("accuracy", "macro_f1", "mcc")}}
        for n in results
    ]


def class_evaluation(results: dict[str, dict[str, Scores]], *, metrics: dict[str, float], table: list[dict[str, Any]],
                     plots: list[Path], warnings: list[str], verdict: str, best: str, per_class: list[dict[str, Any]],
                     truth: dict[str, list[str]], lora: dict[str, list[str]], probs: dict[str, list[list[float]]]) -> dict[str, Any]:
    return {
        "metrics": metrics, "table": table, "plots": plots, "warnings": warnings, "verdict": verdict,
        "best_baseline": best, "report": per_class,
        "baselines": {n: {**results[n]["validation"].as_metrics("validation"), **results[n]["test"].as_metrics("test")}
                      for n in results if n not in ("lora", "ensemble")},
        "predictions": {sp: {"truth": truth[sp], "lora": lora[sp], "probs": probs[sp]} for sp in truth},
    }


# ----------------------------------------------------------------------------- numbers
def number_metrics(per_model: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, per_split in per_model.items():
        prefix = "" if name == "lora" else f"baseline_{name}_"
        for split, vals in per_split.items():
            metrics.update({f"{prefix}{split}_{k}": v for k, v in vals.items()})
    return metrics


def number_verdict(per_model: dict[str, dict[str, dict[str, float]]], best: str, interval: tuple[float, float], *,
                   n: int, unparseable: int) -> str:
    lo, hi = interval
    return (
        f"LoRA {'beats' if lo > 0 else 'does not beat'} the best baseline ({best}, chosen on validation) on "
        f"{n} test rows: MAE {per_model['lora']['test']['mae']:.4f} vs {per_model[best]['test']['mae']:.4f}, "
        f"gain 95% CI [{lo:+.4f}, {hi:+.4f}] {interval_words(lo, hi)}"
        + f"; {unparseable} unparseable answers"
    )


def number_evaluation(per_model: dict[str, dict[str, dict[str, float]]], *, metrics: dict[str, float], warnings: list[str],
                      verdict: str, best: str, predictions: dict[str, Any]) -> dict[str, Any]:
    table = [{"model": n, **{f"{sp}_{k}": round(v, 5) for sp in SPLITS for k, v in per_model[n][sp].items()}}
             for n in per_model]
    return {
        "metrics": metrics, "table": table, "plots": [], "warnings": warnings, "verdict": verdict,
        "best_baseline": best, "report": table,
        "baselines": {n: {f"{sp}_{k}": v for sp in SPLITS for k, v in per_model[n][sp].items()}
                      for n in per_model if n != "lora"},
        "predictions": predictions,
    }
