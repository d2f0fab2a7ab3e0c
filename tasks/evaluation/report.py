"""What an evaluation hands back: the metric names, the comparison table, the one-line verdict, the
markdown report a person reads, and the report dict the evaluate flow logs (``metrics``, ``table``,
``plots``, ``warnings``, ``verdict``, ``best_baseline``, ``report``, ``baselines``, ``predictions``,
``signal``, ``markdown``).

The LoRA run keeps a handful of metrics, named the same for every model kind: ``{split}_accuracy``,
``{split}_macro_f1``, ``{split}_mcc`` (+ its interval), and on test the signal metrics ``test_ic`` (+ its
interval), ``test_log_loss``, ``test_log_loss_skill``, ``test_brier``, ``test_brier_skill``,
``test_backtest_return_net`` and ``test_buy_and_hold_return``; every model's details are in the table.
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


SIGNAL_COLUMNS = ("ic", "ic_ci95_low", "ic_ci95_high", "log_loss", "log_loss_skill", "brier", "brier_skill",
                  "backtest_return_net", "backtest_return_gross", "buy_and_hold_return", "backtest_trades")


def signal_metrics(row: dict[str, Any], *, backtest: bool = True) -> dict[str, float]:
    """A model's test signal metrics under their MLflow names (``test_ic``, ...), those it has. Without
    ``backtest`` only what does not depend on the cost setting (a baseline's run is reused across evaluations)."""
    keys = ["ic", "ic_ci95_low", "ic_ci95_high", "log_loss", "log_loss_skill", "brier", "brier_skill"]
    keys += ["backtest_return_net", "buy_and_hold_return"] if backtest else []
    return {f"test_{k}": float(row[k]) for k in keys if row.get(k) is not None}


def class_table(results: dict[str, dict[str, Scores]], ceilings: tuple[str, ...],
                signal: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per model: accuracy, macro-F1 and MCC on both splits, then its test signal metrics (None where
    it has none: no class probabilities, or no next-day returns on this task)."""
    def cells(n: str) -> dict[str, Any]:
        row = (signal or {}).get(n, {})
        return {f"test_{k}": None if row.get(k) is None else round(float(row[k]), 4) for k in SIGNAL_COLUMNS}

    return [
        {"model": n + (" (ceiling)" if n in ceilings else ""),
         **{f"{sp}_{k}": round(getattr(results[n][sp], k), 4) for sp in SPLITS for k in ("accuracy", "macro_f1", "mcc")},
         **(cells(n) if signal is not None else {})}
        for n in results
    ]


def class_evaluation(results: dict[str, dict[str, Scores]], *, metrics: dict[str, float], table: list[dict[str, Any]],
                     plots: list[Path], warnings: list[str], verdict: str, best: str, per_class: list[dict[str, Any]],
                     truth: dict[str, list[str]], lora: dict[str, list[str]], probs: dict[str, list[list[float]]],
                     signal: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "metrics": metrics, "table": table, "plots": plots, "warnings": warnings, "verdict": verdict,
        "best_baseline": best, "report": per_class, "signal": signal,
        "baselines": {n: {**results[n]["validation"].as_metrics("validation"), **results[n]["test"].as_metrics("test"),
                          **signal_metrics(signal.get(n, {}), backtest=False)}
                      for n in results if n not in ("lora", "ensemble")},
        "predictions": {sp: {"truth": truth[sp], "lora": lora[sp], "probs": probs[sp]} for sp in truth},
    }


# ----------------------------------------------------------------------------- the report a person reads
MEANINGS = {  # one line per figure, shown next to it
    "macro-F1": "mean of the three classes' F1 scores; a class never predicted counts as 0",
    "MCC": "correlation of predicted and actual class (-1..1); 0 is chance whatever the class balance",
    "IC": "information coefficient: Spearman rank correlation of P(up) - P(down) with the next day's return; "
          "a signal needs its 95% CI entirely above 0",
    "log-loss skill": "1 - log loss / log loss of the training-frequency forecast: > 0 the probabilities beat "
                      "the base rates, < 0 they are worse (e.g. confidently wrong)",
    "Brier skill": "the same with the Brier score (squared error of the probabilities): > 0 beats the base rates",
    "backtest, net": "long on POSITIVE, short on NEGATIVE, flat on NEUTRAL, each day's call held over the next day, "
                     "paying {cost_bp:g} bp per unit of position moved (flat to long 1, long to short 2)",
}
NO_PROBABILITIES = "no probabilities"


def _num(v: Any, fmt: str = "+.3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _ic_cell(row: dict[str, Any]) -> str:
    if row.get("ic") is None:
        return NO_PROBABILITIES if not row.get("has_probabilities") else "n/a (no next-day returns)"
    return f"{row['ic']:+.3f} [{row['ic_ci95_low']:+.3f}, {row['ic_ci95_high']:+.3f}]"


def _backtest_cell(row: dict[str, Any]) -> str:
    if row.get("backtest_return_net") is None:
        return "n/a (no next-day returns)"
    return f"{row['backtest_return_net']:+.1%} (gross {row['backtest_return_gross']:+.1%}, {row['backtest_trades']} trades)"


def _lora_lines(s: Scores, mcc: tuple[float, float], row: dict[str, Any], cost_bp: float) -> list[str]:
    """LoRA's figures on test, each with what it means."""
    lines = [f"| macro-F1 | {s.macro_f1:.3f} | {MEANINGS['macro-F1']} |",
             f"| MCC | {s.mcc:+.3f} [{mcc[0]:+.3f}, {mcc[1]:+.3f}] {interval_words(*mcc)} | {MEANINGS['MCC']} |"]
    if row.get("ic") is not None:
        lines.append(f"| IC | {_ic_cell(row)} {interval_words(row['ic_ci95_low'], row['ic_ci95_high'])} | {MEANINGS['IC']} |")
    if row.get("log_loss") is not None:
        lines += [f"| log-loss skill | {row['log_loss_skill']:+.3f} (log loss {row['log_loss']:.3f} vs "
                  f"{row['log_loss_reference']:.3f} for the base rates) | {MEANINGS['log-loss skill']} |",
                  f"| Brier skill | {row['brier_skill']:+.3f} (Brier {row['brier']:.3f} vs {row['brier_reference']:.3f}) | "
                  f"{MEANINGS['Brier skill']} |"]
    if row.get("backtest_return_net") is not None:
        lines.append(f"| backtest, net of costs | {_backtest_cell(row)}; buy and hold {row['buy_and_hold_return']:+.1%} | "
                     f"{MEANINGS['backtest, net'].format(cost_bp=cost_bp)} |")
    return lines


def evaluation_markdown(verdict: str, results: dict[str, dict[str, Scores]], signal: dict[str, dict[str, Any]], *,
                        mcc_interval: tuple[float, float], warnings: list[str], unit: str, cost_bp: float,
                        ceilings: tuple[str, ...] = ()) -> str:
    """The evaluation as a person reads it: the verdict, LoRA's figures on test with one line on what each
    means, then every model's figures side by side (a model without class probabilities says so)."""
    n = results["lora"]["test"].n
    out = [f"## Evaluation on {n} test {unit}", "", f"**{verdict}**", "",
           "| LoRA on test | value | what it means |", "|---|---|---|",
           *_lora_lines(results["lora"]["test"], mcc_interval, signal["lora"], cost_bp), "",
           f"### Every model on test ({n} {unit})", "",
           "| model | macro-F1 | MCC | IC [95% CI] | log-loss skill | Brier skill | backtest, net of costs |",
           "|---|---|---|---|---|---|---|"]
    for name, per_split in results.items():
        row, s = signal.get(name, {}), per_split["test"]
        label = name + (" (ceiling)" if name in ceilings else "")
        skill = (_num(row.get("log_loss_skill")), _num(row.get("brier_skill"))) if row.get("has_probabilities") \
            else (NO_PROBABILITIES, NO_PROBABILITIES)
        out.append(f"| {label} | {s.macro_f1:.3f} | {s.mcc:+.3f} | {_ic_cell(row)} | {skill[0]} | {skill[1]} | "
                   f"{_backtest_cell(row)} |")
    bare = [n for n in results if not signal.get(n, {}).get("has_probabilities")]
    if bare:
        out += ["", f"{', '.join(bare)}: a class only, no class probabilities, so no IC, log loss, Brier score or "
                "reliability (the backtest needs the class only)."]
    if warnings:
        out += ["", "### Warnings", "", *[f"- {w}" for w in warnings]]
    return "\n".join(out) + "\n"


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
    cols = [k for k in table[0] if k != "model"]
    markdown = "\n".join([f"## Evaluation on {len(predictions['test']['truth'])} test rows", "", f"**{verdict}**", "",
                          "MAE: mean absolute error of the number (lower is better); r2: share of the variance explained; "
                          "directional_accuracy: share of rows whose move has the right sign.", "",
                          "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
                          *[f"| {r['model']} | " + " | ".join(f"{r[c]:.4g}" for c in cols) + " |" for r in table],
                          *(["", "### Warnings", "", *[f"- {w}" for w in warnings]] if warnings else [])]) + "\n"
    return {
        "metrics": metrics, "table": table, "plots": [], "warnings": warnings, "verdict": verdict, "markdown": markdown,
        "best_baseline": best, "report": table,
        "baselines": {n: {f"{sp}_{k}": v for sp in SPLITS for k, v in per_model[n][sp].items()}
                      for n in per_model if n != "lora"},
        "predictions": predictions,
    }
