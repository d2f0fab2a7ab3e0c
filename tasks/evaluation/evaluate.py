"""The evaluation task: score a trained adapter and honest baselines on the same validation and test
splits, then compare.

The steps live in their own modules: ``scoring`` (what LoRA predicts, by label likelihood),
``baselines`` (majority, persistence, logistic regression, the sentiment rule; ``textbaselines`` for
the BiLSTM and the voting ensemble), ``metrics``, ``plots`` and ``report`` (files read, verdict text,
the report dict). The best baseline is chosen on validation; the verdict compares the test scores,
with a paired bootstrap 95% interval of the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tasks.core.settings import EvaluationSettings
from tasks.core.storage import DatasetVersion
from tasks.dataset.prompter import Prompter
from tasks.evaluation.baselines import number_columns, split_baselines, train_majority
from tasks.evaluation.metrics import (
    Scores,
    bootstrap_f1_difference,
    bootstrap_mae_difference,
    bootstrap_mcc,
    class_report,
    collapse_warning,
    regression_scores,
    score,
    true_share,
)
from tasks.evaluation.plots import plot_backtest, plot_confusion, plot_model_comparison, plot_reliability
from tasks.evaluation.report import (
    SPLITS,
    class_evaluation,
    class_metrics,
    class_table,
    class_verdict,
    evaluation_markdown,
    number_evaluation,
    number_metrics,
    number_verdict,
    signal_metrics,
)
from tasks.evaluation.scoring import load_scorer, parse_number
from tasks.evaluation.signal import in_label_order, reliability, signal_scores
from tasks.evaluation.verdict import CONSTANT_BASELINES, Comparison, Verdict, decide
from tasks.training.fastpath.attention import sdpa_without_cudnn


@sdpa_without_cudnn
def evaluate_adapter(adapter_dir: Path, base_model: str, dataset_dir: Path, *, cutoff_len: int, seed: int,
                     plots_dir: Path, device: str = "auto", model_type: str = "causal",
                     cost_bp: float | None = None) -> dict[str, Any]:
    """Score the LoRA model and the baselines on validation and test; metrics, plots, verdict, and the
    report a person reads (markdown, written next to ``plots_dir`` as ``report.md``).

    Causal models: classes by label likelihood, numbers generated and parsed strictly; encoder
    models: their head. The best baseline is chosen on validation; the verdict compares the test
    scores, with a paired bootstrap 95% interval of the difference. Class tasks also get the signal
    metrics (IC, log loss and Brier against the base rates, reliability; on the direction task the
    backtest at ``cost_bp`` basis points per unit moved, default ``evaluation.cost_bp``).
    """
    version = DatasetVersion(Path(dataset_dir))
    features, manifest = pl.read_parquet(version.features_path), version.manifest
    scorer = load_scorer(adapter_dir, base_model, cutoff_len, model_type=model_type, kind=manifest.kind, device=device)
    plots_dir.mkdir(parents=True, exist_ok=True)
    ctx = dict(scorer=scorer, prompter=Prompter.load(), features=features, manifest=manifest, version=version,
               seed=seed, plots_dir=plots_dir)
    if manifest.kind == "number":
        report = _evaluate_numbers(**ctx)
    else:
        report = _evaluate_classes(**ctx, cost_bp=EvaluationSettings().cost_bp if cost_bp is None else cost_bp)
    report["markdown_path"] = plots_dir.parent / "report.md"
    report["markdown_path"].write_text(report["markdown"])
    return report


# ----------------------------------------------------------------------------- classes
@dataclass
class _ClassPredictions:
    """Every model's labels per split (LoRA first, in the order the report lists them)."""

    bilstm: Any  # the trained TextBaseline: its size and memory are reported next to LoRA's
    truth: dict[str, list[str]] = field(default_factory=dict)
    preds: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # split -> model -> labels
    # split -> model -> class probabilities in LABELS order, for the models that have them
    probs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    train_labels: list[str] = field(default_factory=list)  # the training-frequency forecast's base rates
    ceilings: tuple[str, ...] = ()


def _predict_classes(scorer, prompter, features, manifest, version, seed, task) -> _ClassPredictions:
    from tasks.evaluation.textbaselines import train_bilstm  # torch loads here

    majority = train_majority(features)
    train_records = version.read_records("train")
    bilstm = train_bilstm([r["input"] for r in train_records], [r["output"] for r in train_records],
                          prompter.labels, seed=seed)
    out = _ClassPredictions(bilstm, train_labels=[r["output"] for r in train_records])
    for split in SPLITS:
        records = version.read_records(split)
        truth = [r["output"] for r in records]
        lora, probs = scorer.labels(records)
        if task == "direction" and features.filter(pl.col("split") == split).sort("date")["label"].to_list() != truth:
            raise ValueError(f"{version.dir}: records and features disagree on the {split} labels")
        preds, base_probs, out.ceilings = split_baselines(features, manifest, split, task=task, seed=seed, majority=majority)
        texts = [r["input"] for r in records]
        preds["bilstm"] = bilstm.predict(texts)
        base_probs["bilstm"] = in_label_order(bilstm.predict_proba(texts), prompter.labels)
        out.truth[split] = truth
        out.probs[split] = {"lora": in_label_order(probs, prompter.labels), **base_probs}
        out.preds[split] = {"lora": lora, **preds}
    return out


def _ensemble_scores(results: dict[str, dict[str, Scores]], run: _ClassPredictions, labels) -> dict[str, Scores]:
    """Weighted voting of LoRA and the trained baselines, weights = validation macro-F1 (no test peeking)."""
    from tasks.evaluation.textbaselines import weighted_vote

    voters = [n for n in ("lora", "bilstm", "logistic") if n in results]
    weights = {n: results[n]["validation"].macro_f1 for n in voters}
    for split in SPLITS:  # its labels join the others' (the backtest reads them)
        run.preds[split]["ensemble"] = weighted_vote({n: run.preds[split][n] for n in voters}, weights, labels)
    return {split: score(run.truth[split], run.preds[split]["ensemble"]) for split in SPLITS}


def _test_signal(run: _ClassPredictions, features: pl.DataFrame, task: str, cost_bp: float, seed: int
                 ) -> dict[str, dict[str, Any]]:
    """Every model's signal metrics on test (tasks.evaluation.signal); the IC and the backtest on the direction
    task only, where each day has a next-day return."""
    returns = (features.filter(pl.col("split") == "test").sort("date")["next_day_return"].to_list()
               if task == "direction" else None)
    return {name: signal_scores(run.truth["test"], preds, run.probs["test"].get(name), run.train_labels,
                                next_returns=returns, cost_bp=cost_bp, seed=seed)
            for name, preds in run.preds["test"].items()}


def _class_plots(run: _ClassPredictions, features: pl.DataFrame, table, task: str, cost_bp: float,
                 plots_dir: Path) -> list[Path]:
    """The confusion matrix, the comparison, LoRA's reliability diagram; for the direction task the backtest too."""
    from tasks.evaluation.signal import backtest_with_costs

    lora_test = run.preds["test"]["lora"]
    plots = [
        plot_confusion(run.truth["test"], lora_test, "LoRA, test split", plots_dir / "confusion_lora_test.png"),
        plot_model_comparison(table, plots_dir / "macro_f1_vs_baselines.png"),
        plot_reliability(reliability(run.truth["test"], run.probs["test"]["lora"]),
                         f"LoRA reliability on {len(lora_test)} test rows (5 bins a class)", plots_dir / "reliability_lora_test.png"),
    ]
    if task == "direction":
        test = features.filter(pl.col("split") == "test").sort("date")
        bt = backtest_with_costs(test["next_day_return"].to_list(), lora_test, cost_bp / 1e4)
        curves = {f"LoRA, net of {cost_bp:g} bp per trade": bt["strategy"], "LoRA, before costs": bt["strategy_gross"],
                  "buy and hold": bt["buy_and_hold"]}
        plots.append(plot_backtest(test["date"].to_list(), curves,
                                   "Long on POSITIVE, short on NEGATIVE, flat otherwise (test days)",
                                   plots_dir / "backtest_test.png"))
    return plots


def _split_verdict(split: str, run: _ClassPredictions, results: dict[str, dict[str, Scores]], baselines: list[str],
                   best: str, seed: int, unit: str) -> tuple[Verdict, dict[str, float]]:
    """LoRA against every baseline on ``split`` (paired bootstrap of the macro-F1 difference), judged by the
    one rule of tasks.evaluation.verdict; also the MCC interval's metrics."""
    truth, lora = run.truth[split], run.preds[split]["lora"]
    comparisons = {}
    for b in baselines:
        _, lo, hi = bootstrap_f1_difference(truth, lora, run.preds[split][b], seed=seed)
        comparisons[b] = Comparison(b, results["lora"][split].macro_f1, results[b][split].macro_f1, lo, hi)
    _, mcc_lo, mcc_hi = bootstrap_mcc(truth, lora, seed=seed)
    verdict = decide(split, comparisons, best, lora_share=results["lora"][split].predicted_share,
                     true_share=true_share(truth), mcc_interval=(mcc_lo, mcc_hi),
                     baseline_shares={b: results[b][split].predicted_share for b in baselines},
                     n=results["lora"][split].n, unit=unit)
    c = comparisons[best]
    return verdict, {f"{split}_macro_f1_minus_best_baseline": c.difference, f"{split}_macro_f1_diff_ci95_low": c.low,
                     f"{split}_macro_f1_diff_ci95_high": c.high, f"{split}_mcc_ci95_low": mcc_lo,
                     f"{split}_mcc_ci95_high": mcc_hi}


def _evaluate_classes(scorer, prompter, features, manifest, version, seed, plots_dir, cost_bp) -> dict[str, Any]:
    task = manifest.task
    unit = "days" if task == "direction" else "posts"
    run = _predict_classes(scorer, prompter, features, manifest, version, seed, task)
    results = {name: {split: score(run.truth[split], run.preds[split][name]) for split in SPLITS}
                for name in run.preds["validation"]}
    results["ensemble"] = _ensemble_scores(results, run, prompter.labels)
    metrics = class_metrics(results, run.bilstm.trainable_params, run.bilstm.peak_memory_mb)
    baselines = [n for n in results if n not in ("lora", "ensemble", *run.ceilings)]
    best = max(baselines, key=lambda n: results[n]["validation"].macro_f1)
    verdicts = {}
    for split in SPLITS:
        verdicts[split], split_metrics = _split_verdict(split, run, results, baselines, best, seed, unit)
        metrics.update(split_metrics)
    verdict = class_verdict(verdicts["test"], results, ceilings=run.ceilings)
    signal = _test_signal(run, features, task, cost_bp, seed)
    metrics.update(signal_metrics(signal["lora"]))
    table = class_table(results, run.ceilings, signal)
    warned = ("lora", *(b for b in baselines if b not in CONSTANT_BASELINES))  # the majority is one class by design
    warnings = [w for w in (collapse_warning(f"{name} ({sp})", results[name][sp], run.truth[sp], unit)
                            for name in warned for sp in SPLITS) if w]
    plots = _class_plots(run, features, table, task, cost_bp, plots_dir)
    lora_probs = {sp: run.probs[sp]["lora"].round(4).tolist() for sp in SPLITS}
    report = class_evaluation(results, metrics=metrics, table=table, plots=plots, warnings=warnings, verdict=verdict,
                              best=best, per_class=class_report(run.truth["test"], run.preds["test"]["lora"]),
                              truth=run.truth, lora={sp: p["lora"] for sp, p in run.preds.items()}, probs=lora_probs,
                              signal=signal)
    report["markdown"] = evaluation_markdown(verdict, results, signal, warnings=warnings, unit=unit, cost_bp=cost_bp,
                                             mcc_interval=(metrics["test_mcc_ci95_low"], metrics["test_mcc_ci95_high"]),
                                             ceilings=run.ceilings)
    return {**report, "outcome": verdicts["test"].outcome, "strongest_baseline": verdicts["test"].strongest,
            "validation_outcome": verdicts["validation"].outcome, "validation_verdict": verdicts["validation"].text}


# ----------------------------------------------------------------------------- numbers
def _predict_numbers(scorer, features, manifest, version, task):
    """Per model and split its regression scores, the logged predictions, and the unparseable-answer counts."""
    target, last, order = number_columns(task, manifest)
    constant = float(np.mean(target(features.filter(pl.col("split") == "train"))))
    per_model: dict[str, dict[str, dict[str, float]]] = {}
    preds_out: dict[str, Any] = {}
    test_preds: dict[str, list[float]] = {}
    unparseable: dict[str, float] = {}
    for split in SPLITS:
        sub = features.filter(pl.col("split") == split)
        if order:
            sub = sub.sort(order)
        y = target(sub)
        answers = scorer.answers(version.read_records(split))
        parsed = [parse_number(a) for a in answers]
        lora = [p if p is not None else constant for p in parsed]  # an unparseable answer scores as the constant
        ref = None if task == "return" else last(sub)
        candidates = {"lora": lora, "constant": [constant] * len(y), "last_value": last(sub)}
        for name, p in candidates.items():
            per_model.setdefault(name, {})[split] = regression_scores(y, p, ref)
            if split == "test":
                test_preds[name] = p
        unparseable[f"{split}_unparseable_answers"] = sum(p is None for p in parsed)
        preds_out[split] = {"truth": y, "answers": answers, "lora": lora}
    return per_model, preds_out, test_preds, unparseable


def _evaluate_numbers(scorer, prompter, features, manifest, version, seed, plots_dir) -> dict[str, Any]:
    per_model, preds_out, test_preds, unparseable = _predict_numbers(scorer, features, manifest, version, manifest.task)
    metrics = {**unparseable, **number_metrics(per_model)}
    best = min(("constant", "last_value"), key=lambda n: per_model[n]["validation"]["mae"])
    y_test = preds_out["test"]["truth"]
    diff, lo, hi = bootstrap_mae_difference(y_test, test_preds["lora"], test_preds[best], seed=seed)
    metrics.update({"test_mae_gain_over_best_baseline": diff, "test_mae_gain_ci95_low": lo, "test_mae_gain_ci95_high": hi})
    errors = int(metrics["test_unparseable_answers"])
    verdict = number_verdict(per_model, best, (lo, hi), n=len(y_test), unparseable=errors)
    warnings = []
    if float(np.std(test_preds["lora"])) < 1e-6:
        warnings.append("lora predicts (almost) the same number for every test row: it has collapsed to a constant")
    if errors:
        warnings.append(f"{errors} test answers did not parse as a number")
    return number_evaluation(per_model, metrics=metrics, warnings=warnings, verdict=verdict, best=best, predictions=preds_out)
