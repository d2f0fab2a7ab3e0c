"""Walk-forward evaluation (as qlib's rolling tasks): each fold of ``tasks.evaluation.folds`` relabels the
days with thresholds from its OWN training days, fits the baselines (and trains LoRA) on them, and scores
its next days; the verdict is the one rule of ``tasks.evaluation.verdict`` on every fold's test days pooled.

Nothing a fold scores reaches what it learns from: its labels' dead band, its baselines' fit, its LoRA
adapter and (for the tiny model) its tokenizer all come from its training days only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from tasks.core.settings import DatasetSettings
from tasks.dataset.labels import add_persistence, label_from_return, label_thresholds
from tasks.dataset.prompter import Prompter
from tasks.dataset.records import build_records
from tasks.evaluation.baselines import baseline_predictions
from tasks.evaluation.foldmodel import SCORED
from tasks.evaluation.folds import Fold
from tasks.evaluation.metrics import bootstrap_f1_difference, bootstrap_mcc, score, true_share
from tasks.evaluation.verdict import Comparison, Verdict, decide

BASELINES = ("majority", "persistence", "logistic")


@dataclass
class FoldResult:
    """One fold's truth and every model's predictions on its validation and test days."""

    fold: Fold
    thresholds: dict[str, float]
    rows: dict[str, int]
    truth: dict[str, list[str]]
    preds: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # model -> split -> labels

    def metrics(self) -> dict[str, float]:
        """``<model>_<split>_{accuracy,macro_f1,mcc}`` for every model and scored split, and ``_top_share``: the
        share of the class it predicts most (1.0: one class only)."""
        out: dict[str, float] = {}
        for model, by_split in self.preds.items():
            for split in SCORED:
                s = score(self.truth[split], by_split[split])
                out.update(s.as_metrics(f"{model}_{split}"))
                out[f"{model}_{split}_top_share"] = max(s.predicted_share.values())
        return out

    def row(self) -> dict[str, Any]:
        """The fold's line of the per-fold table."""
        return {**self.fold.as_dict(), **self.thresholds, **{f"rows_{k}": v for k, v in self.rows.items()},
                **{k: round(v, 4) for k, v in self.metrics().items()}}


def fold_frame(features: pl.DataFrame, fold: Fold, dataset_settings: DatasetSettings) -> tuple[pl.DataFrame, dict[str, float]]:
    """The fold's days labelled with thresholds from the fold's training days (no look-ahead), with today's
    label (persistence) recomputed from those labels and ``split`` set from the fold's date ranges; days
    outside the fold's ranges (embargo, later days) are dropped."""
    d = pl.col("date")
    train_returns = features.filter(d.is_between(*fold.train))["next_day_return"].drop_nulls()
    neg, pos = label_thresholds(train_returns, dataset_settings.label_quantiles, dataset_settings.fixed_thresholds)
    relabelled = add_persistence(features.with_columns(label_from_return(pl.col("next_day_return"), neg, pos).alias("label")))
    split = (pl.when(d.is_between(*fold.train)).then(pl.lit("train"))
             .when(d.is_between(*fold.validation)).then(pl.lit("validation"))
             .when(d.is_between(*fold.test)).then(pl.lit("test"))
             .otherwise(pl.lit(None, pl.String)))
    frame = (relabelled.with_columns(split.alias("split"))
             .filter(pl.col("split").is_not_null() & pl.col("label").is_not_null()).sort("date"))
    return frame, {"negative_below": neg, "positive_above": pos}


def new_fold_result(frame: pl.DataFrame, fold: Fold, thresholds: dict[str, float]) -> FoldResult:
    rows = {s: frame.filter(pl.col("split") == s).height for s in ("train", *SCORED)}
    truth = {s: frame.filter(pl.col("split") == s)["label"].to_list() for s in SCORED}
    return FoldResult(fold, thresholds, rows, truth)


def fold_baselines(frame: pl.DataFrame, numeric_cols: list[str], seed: int) -> dict[str, dict[str, list[str]]]:
    """Majority, persistence and logistic regression fitted on the fold's training days: model -> split -> labels."""
    by_split = {s: baseline_predictions(frame, numeric_cols, s, seed) for s in SCORED}
    return {name: {s: by_split[s][name] for s in SCORED} for name in BASELINES}


def fold_records(frame: pl.DataFrame, prompter: Prompter, assets: list[str], chain_label: str) -> dict[str, list[dict[str, Any]]]:
    """The fold's Alpaca records per split, rendered by the same prompter and template as build-dataset."""
    records = build_records(frame, prompter, assets, chain_label)
    instruction = prompter.instruction_for("direction")
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in ("train", *SCORED)}
    for r in records:
        out[r["split"]].append({**r, "instruction": instruction})
    return out


def pooled(results: Sequence[FoldResult], model: str, split: str) -> tuple[list[str], list[str]]:
    """(truth, predictions) of ``model`` over every fold's ``split`` days, in fold order."""
    truth = [t for r in results for t in r.truth[split]]
    preds = [p for r in results for p in r.preds[model][split]]
    return truth, preds


def pooled_metrics(results: Sequence[FoldResult]) -> dict[str, float]:
    """``pooled_<model>_<split>_*`` over every fold's days."""
    out: dict[str, float] = {}
    for model in results[0].preds:
        for split in SCORED:
            out.update(score(*pooled(results, model, split)).as_metrics(f"pooled_{model}_{split}"))
    return out


def pooled_verdict(results: Sequence[FoldResult], seed: int) -> Verdict:
    """The verdict rule on every fold's test days pooled: LoRA against every baseline; the baseline chosen is
    the best on the pooled validation days."""
    chosen = max(BASELINES, key=lambda b: score(*pooled(results, b, "validation")).macro_f1)
    truth, lora = pooled(results, "lora", "test")
    lora_scores = score(truth, lora)
    comparisons, shares = {}, {}
    for b in BASELINES:
        base = pooled(results, b, "test")[1]
        _, lo, hi = bootstrap_f1_difference(truth, lora, base, seed=seed)
        s = score(truth, base)
        comparisons[b] = Comparison(b, lora_scores.macro_f1, s.macro_f1, lo, hi)
        shares[b] = s.predicted_share
    _, mcc_lo, mcc_hi = bootstrap_mcc(truth, lora, seed=seed)
    return decide("walk-forward test", comparisons, chosen, lora_share=lora_scores.predicted_share,
                  true_share=true_share(truth), mcc_interval=(mcc_lo, mcc_hi), baseline_shares=shares, n=len(truth))


def plot_fold_f1(results: Sequence[FoldResult], path: Path) -> Path:
    """Test macro-F1 per fold (x: the fold's first test day) for LoRA and each baseline."""
    series = {model: [(r.fold.test[0], score(r.truth["test"], r.preds[model]["test"]).macro_f1) for r in results]
              for model in results[0].preds}
    return plot_per_fold(series, path, "Walk-forward: test macro-F1 per fold")


def plot_per_fold(series: dict[str, list[tuple[Any, float]]], path: Path, title: str) -> Path:
    """One line per model of (first test day, test macro-F1) points; LoRA's drawn thicker. The walk-forward flow's
    plot, and the benches' that draw from their saved per-fold rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=110)
    for model, points in series.items():
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=4, linewidth=2.2 if model == "lora" else 1.2, label=model)
    top = max((y for points in series.values() for _, y in points), default=1.0)
    ax.set_ylabel("test macro-F1")
    ax.set_xlabel("fold (first test day)")
    ax.set_ylim(0, min(1.0, top + 0.15))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
