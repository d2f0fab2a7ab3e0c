"""Evaluation: label-likelihood scoring, honest baselines, metrics and plots.

A causal model is never asked to write free text here: each candidate label is scored by the
log-likelihood of its tokens given the prompt (built by the same prompter as in training), and
the best one wins. Baselines see the same splits: majority class (of train), persistence
(tomorrow's move = today's) and a logistic regression on the same numeric features.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tasks.core.logs import quiet_peft_wrap
from tasks.core.schemas import LABELS
from tasks.training.fastpath.attention import sdpa_without_cudnn

COLLAPSE_SHARE = 0.9  # warn when one class takes at least this share of predictions


@dataclass(frozen=True)
class Scores:
    accuracy: float
    macro_f1: float
    mcc: float
    n: int
    predicted_share: dict[str, float]

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_accuracy": self.accuracy, f"{prefix}_macro_f1": self.macro_f1, f"{prefix}_mcc": self.mcc}


def score(y_true: Sequence[str], y_pred: Sequence[str]) -> Scores:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    counts = Counter(y_pred)
    return Scores(
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=list(LABELS), average="macro", zero_division=0)),
        mcc=float(matthews_corrcoef(y_true, y_pred)) if len(set(y_true) | set(y_pred)) > 1 else 0.0,
        n=len(y_true),
        predicted_share={lab: counts.get(lab, 0) / max(1, len(y_pred)) for lab in LABELS},
    )


def bootstrap_f1_difference(y_true: Sequence[str], pred_a: Sequence[str], pred_b: Sequence[str], *,
                            resamples: int = 2000, seed: int = 42, level: float = 0.95) -> tuple[float, float, float]:
    """Paired bootstrap of macro-F1(a) - macro-F1(b) over the same days: (point, low, high)."""
    from sklearn.metrics import f1_score

    labels = list(LABELS)
    t, a, b = np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)

    def f1(y, p):
        return f1_score(y, p, labels=labels, average="macro", zero_division=0)

    point = f1(t, a) - f1(t, b)
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, len(t), len(t))
        diffs[i] = f1(t[idx], a[idx]) - f1(t[idx], b[idx])
    lo, hi = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(point), float(lo), float(hi)


def collapse_warning(name: str, s: Scores) -> str | None:
    top = max(s.predicted_share, key=s.predicted_share.get)
    if s.predicted_share[top] >= COLLAPSE_SHARE:
        return f"{name} predicts {top} for {s.predicted_share[top]:.0%} of days: it has collapsed to (almost) a constant"
    return None


# ----------------------------------------------------------------------------- LoRA scoring
def label_loglik(model, tokenizer, prompter, records: Sequence[dict[str, Any]], cutoff_len: int,
                 batch_size: int = 8) -> np.ndarray:
    """(n_records, n_labels) summed log-probabilities of each label's tokens given the prompt."""
    import torch

    from tasks.training.train import collate, encode_pair

    device = next(model.parameters()).device
    seqs = []
    for r in records:
        prompt = prompter.prompt(r["instruction"], r["input"])
        for lab in prompter.labels:
            p_ids, r_ids = encode_pair(tokenizer, prompt, prompter.response(lab), cutoff_len)
            seqs.append({"input_ids": p_ids + r_ids, "labels": [-100] * len(p_ids) + r_ids})
    out = np.zeros(len(seqs))
    model.eval()
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            batch = collate(seqs[i:i + batch_size], tokenizer.pad_token_id, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = batch["labels"][:, 1:]
            mask = target != -100
            picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            out[i:i + len(picked)] = (picked * mask).sum(-1).cpu().numpy()
    return out.reshape(len(records), len(prompter.labels))


def predict_labels(loglik: np.ndarray, labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Best label per row and the class probabilities (softmax over the label log-likelihoods)."""
    z = loglik - loglik.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return [labels[i] for i in loglik.argmax(axis=1)], probs


# ----------------------------------------------------------------------------- baselines
def baseline_predictions(features: pl.DataFrame, numeric_cols: list[str], split: str, seed: int) -> dict[str, list[str]]:
    """Majority, persistence and logistic-regression predictions for the rows of ``split``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = features.filter(pl.col("split") == "train")
    target = features.filter(pl.col("split") == split)
    majority = Counter(train["label"].to_list()).most_common(1)[0][0]
    preds = {"majority": [majority] * target.height}
    preds["persistence"] = [t if t is not None else majority for t in target["today_label"].to_list()]
    medians = train.select(pl.col(numeric_cols).median()).row(0, named=True)

    def matrix(df: pl.DataFrame) -> np.ndarray:
        filled = df.select([pl.col(c).cast(pl.Float64).fill_nan(None).fill_null(medians[c] if medians[c] is not None else 0.0)
                            for c in numeric_cols])
        return filled.to_numpy()

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5, random_state=seed))
    clf.fit(matrix(train), train["label"].to_list())
    preds["logistic"] = [str(x) for x in clf.predict(matrix(target))]
    return preds


# ----------------------------------------------------------------------------- plots
def plot_confusion(y_true: Sequence[str], y_pred: Sequence[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=list(LABELS))
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=110)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=30)
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, fontsize=9)
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_model_comparison(table: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in table]
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=110)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [r["validation_macro_f1"] for r in table], 0.4, label="validation")
    ax.bar(x + 0.2, [r["test_macro_f1"] for r in table], 0.4, label="test")
    ax.set_xticks(x, names)
    ax.set_ylabel("macro-F1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("LoRA vs baselines (same splits)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the evaluation task
def load_split(dataset_dir: Path, split: str) -> list[dict[str, Any]]:
    import json

    path = Path(dataset_dir) / f"{split}.json"
    return json.loads(path.read_text()) if path.is_file() else []


def sentiment_rule(features: pl.DataFrame, split: str, fallback: str) -> list[str]:
    """Mean sentiment of the day's posts -> label (VADER thresholds); days without posts: fallback."""
    from tasks.social.sentiment import NEGATIVE_AT, POSITIVE_AT

    out = []
    for v in features.filter(pl.col("split") == split).sort("date")["sentiment_mean"].to_list():
        out.append(fallback if v is None else "POSITIVE" if v >= POSITIVE_AT else "NEGATIVE" if v <= NEGATIVE_AT else "NEUTRAL")
    return out


def class_report(y_true: Sequence[str], y_pred: Sequence[str]) -> list[dict[str, Any]]:
    from sklearn.metrics import classification_report

    rep = classification_report(y_true, y_pred, labels=list(LABELS), output_dict=True, zero_division=0)
    return [{"class": k, **{m: round(float(v), 4) for m, v in vals.items()}} for k, vals in rep.items() if isinstance(vals, dict)]


# ----------------------------------------------------------------------------- numbers
NUMBER_PATTERN = r"^\s*([+-]?\d+(?:\.\d+)?)\s*$"


def parse_number(text: str) -> float | None:
    """Strict: the whole answer must be one number; anything else is an error (None)."""
    import re

    m = re.match(NUMBER_PATTERN, text.split("\n", 1)[0])
    return float(m.group(1)) if m else None


def generate_answers(model, tokenizer, prompter, records: Sequence[dict[str, Any]], cutoff_len: int,
                     max_new_tokens: int = 10) -> list[str]:
    """Greedy answers, one prompt at a time (no padding effects), decoded up to EOS."""
    import torch

    from tasks.training.train import encode_pair

    device = next(model.parameters()).device
    out = []
    model.eval()
    with torch.no_grad():
        for r in records:
            p_ids, _ = encode_pair(tokenizer, prompter.prompt(r["instruction"], r["input"]), "",
                                   max(2, cutoff_len - max_new_tokens), add_eos=False)
            ids = torch.tensor([p_ids], device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return out


def regression_scores(y_true: Sequence[float], y_pred: Sequence[float], reference: Sequence[float] | None = None) -> dict[str, float]:
    """MAE, R2 and directional accuracy (sign of the move vs ``reference``: 0 for returns, the last value otherwise)."""
    from sklearn.metrics import mean_absolute_error, r2_score

    t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    ref = np.zeros_like(t) if reference is None else np.asarray(reference, float)
    return {"mae": float(mean_absolute_error(t, p)), "r2": float(r2_score(t, p)) if len(t) > 1 else float("nan"),
            "directional_accuracy": float(np.mean(np.sign(t - ref) == np.sign(p - ref)))}


def bootstrap_mae_difference(y_true, pred_a, pred_b, *, resamples: int = 2000, seed: int = 42) -> tuple[float, float, float]:
    """Paired bootstrap of MAE(b) - MAE(a): positive when a is better."""
    t, a, b = (np.asarray(x, float) for x in (y_true, pred_a, pred_b))
    err = np.abs(b - t) - np.abs(a - t)
    rng = np.random.default_rng(seed)
    means = np.array([err[rng.integers(0, len(t), len(t))].mean() for _ in range(resamples)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(err.mean()), float(lo), float(hi)


# ----------------------------------------------------------------------------- backtest
def backtest(daily_returns: Sequence[float], long: Sequence[bool]) -> dict[str, np.ndarray]:
    """Long on the signal (held for the next day), flat otherwise, against buy-and-hold."""
    r = np.asarray(daily_returns, float)
    pos = np.asarray(long, float)
    return {"strategy": np.cumprod(1 + r * pos), "buy_and_hold": np.cumprod(1 + r)}


def plot_backtest(dates: Sequence[Any], curves: dict[str, np.ndarray], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    for name, curve in curves.items():
        ax.plot(list(dates), curve, label=name)
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_ylabel("growth of 1")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the evaluation task
class CausalScorer:
    """A causal LoRA model: classes by label likelihood, numbers generated and parsed strictly."""

    def __init__(self, adapter_dir: Path, base_model: str, cutoff_len: int, device: str = "auto"):
        from peft import PeftModel

        from tasks.dataset.prompter import Prompter
        from tasks.training.train import load_base_model, pick_device

        dev = pick_device(device)
        self.tokenizer, base = load_base_model(base_model, dev)
        with quiet_peft_wrap():
            self.model = PeftModel.from_pretrained(base, str(adapter_dir)).to(dev)
        self.prompter = Prompter.load()
        self.cutoff_len = cutoff_len

    def labels(self, records: Sequence[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
        return predict_labels(label_loglik(self.model, self.tokenizer, self.prompter, records, self.cutoff_len),
                              self.prompter.labels)

    def answers(self, records: Sequence[dict[str, Any]]) -> list[str]:
        return generate_answers(self.model, self.tokenizer, self.prompter, records, self.cutoff_len)


class EncoderScorer:
    """An encoder LoRA model: its head's outputs (class probabilities, or the regressed number)."""

    def __init__(self, adapter_dir: Path, base_model: str, cutoff_len: int, kind: str, device: str = "auto"):
        from tasks.training.encoder import EncoderPredictor

        self.predictor = EncoderPredictor(adapter_dir, base_model, kind, device, max_len=cutoff_len)

    def labels(self, records: Sequence[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
        return self.predictor.predict_labels([r["input"] for r in records])

    def answers(self, records: Sequence[dict[str, Any]]) -> list[str]:
        return [f"{x:.4f}" for x in self.predictor.predict_numbers([r["input"] for r in records])]


@sdpa_without_cudnn
def evaluate_adapter(adapter_dir: Path, base_model: str, dataset_dir: Path, *, cutoff_len: int, seed: int,
                     plots_dir: Path, device: str = "auto", model_type: str = "causal") -> dict[str, Any]:
    """Score the LoRA model and the baselines on validation and test; metrics, plots, verdict.

    Causal models: classes by label likelihood, numbers generated and parsed strictly; encoder
    models: their head. The best baseline is chosen on validation; the verdict compares the test
    scores, with a paired bootstrap 95% interval of the difference.
    """
    import json

    from tasks.dataset.prompter import Prompter

    features = pl.read_parquet(Path(dataset_dir) / "features.parquet")
    manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    kind = manifest.get("kind", "class")
    scorer = (EncoderScorer(adapter_dir, base_model, cutoff_len, kind, device) if model_type == "encoder"
              else CausalScorer(adapter_dir, base_model, cutoff_len, device))
    plots_dir.mkdir(parents=True, exist_ok=True)
    ctx = dict(scorer=scorer, prompter=Prompter.load(), features=features, manifest=manifest,
               dataset_dir=Path(dataset_dir), seed=seed, plots_dir=plots_dir)
    if kind == "number":
        return _evaluate_numbers(**ctx)
    return _evaluate_classes(**ctx)


def _evaluate_classes(scorer, prompter, features, manifest, dataset_dir, seed, plots_dir) -> dict[str, Any]:
    task = manifest.get("task", "direction")
    results: dict[str, dict[str, Scores]] = {}
    lora_preds: dict[str, list[str]] = {}
    truth: dict[str, list[str]] = {}
    probs_out: dict[str, list[list[float]]] = {}
    test_preds: dict[str, list[str]] = {}
    ceilings: set[str] = set()
    split_preds: dict[str, dict[str, list[str]]] = {}
    train_majority = Counter(features.filter(pl.col("split") == "train")["label"].to_list()).most_common(1)[0][0]
    from tasks.evaluation.textbaselines import train_bilstm, weighted_vote

    train_records = load_split(dataset_dir, "train")
    bilstm = train_bilstm([r["input"] for r in train_records], [r["output"] for r in train_records],
                          prompter.labels, seed=seed)
    for split in ("validation", "test"):
        records = load_split(dataset_dir, split)
        truth[split] = [r["output"] for r in records]
        lora_preds[split], probs = scorer.labels(records)
        probs_out[split] = probs.round(4).tolist()
        results.setdefault("lora", {})[split] = score(truth[split], lora_preds[split])
        test_preds["lora"] = lora_preds[split]
        if task == "direction":
            sub = features.filter(pl.col("split") == split).sort("date")
            if sub["label"].to_list() != truth[split]:
                raise ValueError(f"{dataset_dir}: records and features disagree on the {split} labels")
            preds = baseline_predictions(features, manifest["numeric_features"], split, seed)
            preds["sentiment_rule"] = sentiment_rule(features, split, train_majority)
        else:  # sentiment: the per-post VADER label is the labeller itself -> a ceiling, not a baseline
            sub = features.filter(pl.col("split") == split)
            preds = {"majority": [train_majority] * sub.height, "vader_rule": sub["post_rule_label"].to_list()}
            ceilings.add("vader_rule")
        preds["bilstm"] = bilstm.predict([r["input"] for r in records])
        for name, p in preds.items():
            results.setdefault(name, {})[split] = score(truth[split], p)
            test_preds[name] = p
        split_preds[split] = {"lora": lora_preds[split], **preds}
    # Weighted voting of LoRA and the trained baselines, weights = validation macro-F1 (no test peeking).
    voters = [n for n in ("lora", "bilstm", "logistic") if n in results]
    weights = {n: results[n]["validation"].macro_f1 for n in voters}
    for split in ("validation", "test"):
        results.setdefault("ensemble", {})[split] = score(
            truth[split], weighted_vote({n: split_preds[split][n] for n in voters}, weights, prompter.labels))
    metrics: dict[str, float] = {"baseline_bilstm_trainable_params": bilstm.trainable_params,
                                 "baseline_bilstm_peak_memory_mb": bilstm.peak_memory_mb}
    for name, per_split in results.items():
        prefix = "" if name == "lora" else "ensemble_" if name == "ensemble" else f"baseline_{name}_"
        for split, sc in per_split.items():
            metrics.update({f"{prefix}{k}": v for k, v in sc.as_metrics(split).items()})
    baselines = [n for n in results if n not in ("lora", "ensemble", *ceilings)]
    best = max(baselines, key=lambda n: results[n]["validation"].macro_f1)
    lora_f1, best_f1 = results["lora"]["test"].macro_f1, results[best]["test"].macro_f1
    diff, lo, hi = bootstrap_f1_difference(truth["test"], lora_preds["test"], test_preds[best], seed=seed)
    metrics.update({"test_macro_f1_minus_best_baseline": diff, "test_macro_f1_diff_ci95_low": lo,
                    "test_macro_f1_diff_ci95_high": hi})
    unit = "test days" if task == "direction" else "test posts"
    verdict = (
        f"LoRA {'beats' if lo > 0 else 'does not beat'} the best baseline ({best}, chosen on validation) on "
        f"{results['lora']['test'].n} {unit}: macro-F1 {lora_f1:.3f} vs {best_f1:.3f}, "
        f"difference 95% CI [{lo:+.3f}, {hi:+.3f}]" + ("" if lo > 0 else " includes 0")
    )
    if ceilings:
        verdict += "; " + ", ".join(f"{c} (the labeller, a ceiling) {results[c]['test'].macro_f1:.3f}" for c in sorted(ceilings))
    table = [
        {"model": n + (" (ceiling)" if n in ceilings else ""),
         **{f"{sp}_{k}": round(getattr(results[n][sp], k), 4) for sp in ("validation", "test") for k in ("accuracy", "macro_f1", "mcc")}}
        for n in results
    ]
    warnings = [w for w in (collapse_warning(f"lora ({sp})", results["lora"][sp]) for sp in ("validation", "test")) if w]
    plots = [
        plot_confusion(truth["test"], lora_preds["test"], "LoRA, test split", plots_dir / "confusion_lora_test.png"),
        plot_model_comparison(table, plots_dir / "macro_f1_vs_baselines.png"),
    ]
    if task == "direction":
        test = features.filter(pl.col("split") == "test").sort("date")
        curves = backtest(test["next_day_return"].to_list(), [p == "POSITIVE" for p in lora_preds["test"]])
        metrics.update({"test_backtest_strategy_return": float(curves["strategy"][-1] - 1),
                        "test_backtest_buy_and_hold_return": float(curves["buy_and_hold"][-1] - 1)})
        plots.append(plot_backtest(test["date"].to_list(), curves, "Long on POSITIVE, flat otherwise (test days)",
                                   plots_dir / "backtest_test.png"))
    return {
        "metrics": metrics, "table": table, "plots": plots, "warnings": warnings, "verdict": verdict,
        "best_baseline": best, "report": class_report(truth["test"], lora_preds["test"]),
        "baselines": {n: {**results[n]["validation"].as_metrics("validation"), **results[n]["test"].as_metrics("test")}
                      for n in results if n not in ("lora", "ensemble")},
        "predictions": {sp: {"truth": truth[sp], "lora": lora_preds[sp], "probs": probs_out[sp]} for sp in truth},
    }


def _evaluate_numbers(scorer, prompter, features, manifest, dataset_dir, seed, plots_dir) -> dict[str, Any]:
    task = manifest["task"]
    train = features.filter(pl.col("split") == "train")
    if task == "return":
        target = lambda f: (f["next_day_return"] * 100).to_list()  # noqa: E731 - percent, as in the records
        last = lambda f: (f[f"{manifest['target_asset'].lower()}_ret_1d"].fill_null(0.0) * 100).to_list()  # noqa: E731
        order = "date"
    else:
        target = lambda f: f["target"].to_list()  # noqa: E731
        last = lambda f: f["last_log_value"].to_list()  # noqa: E731
        order = None
    constant = float(np.mean(target(train)))
    metrics: dict[str, float] = {}
    per_model: dict[str, dict[str, dict[str, float]]] = {}
    preds_out: dict[str, Any] = {}
    test_preds: dict[str, list[float]] = {}
    for split in ("validation", "test"):
        sub = features.filter(pl.col("split") == split)
        if order:
            sub = sub.sort(order)
        records = load_split(dataset_dir, split)
        y = target(sub)
        answers = scorer.answers(records)
        parsed = [parse_number(a) for a in answers]
        errors = sum(p is None for p in parsed)
        lora = [p if p is not None else constant for p in parsed]  # an unparseable answer scores as the constant
        ref = None if task == "return" else last(sub)
        candidates = {"lora": lora, "constant": [constant] * len(y), "last_value": last(sub)}
        for name, p in candidates.items():
            per_model.setdefault(name, {})[split] = regression_scores(y, p, ref)
            if split == "test":
                test_preds[name] = p
        metrics[f"{split}_unparseable_answers"] = errors
        preds_out[split] = {"truth": y, "answers": answers, "lora": lora}
    for name, per_split in per_model.items():
        prefix = "" if name == "lora" else f"baseline_{name}_"
        for split, vals in per_split.items():
            metrics.update({f"{prefix}{split}_{k}": v for k, v in vals.items()})
    best = min(("constant", "last_value"), key=lambda n: per_model[n]["validation"]["mae"])
    y_test = preds_out["test"]["truth"]
    diff, lo, hi = bootstrap_mae_difference(y_test, test_preds["lora"], test_preds[best], seed=seed)
    metrics.update({"test_mae_gain_over_best_baseline": diff, "test_mae_gain_ci95_low": lo, "test_mae_gain_ci95_high": hi})
    verdict = (
        f"LoRA {'beats' if lo > 0 else 'does not beat'} the best baseline ({best}, chosen on validation) on "
        f"{len(y_test)} test rows: MAE {per_model['lora']['test']['mae']:.4f} vs {per_model[best]['test']['mae']:.4f}, "
        f"gain 95% CI [{lo:+.4f}, {hi:+.4f}]" + ("" if lo > 0 else " includes 0")
        + f"; {int(metrics['test_unparseable_answers'])} unparseable answers"
    )
    warnings = []
    if float(np.std(test_preds["lora"])) < 1e-6:
        warnings.append("lora predicts (almost) the same number for every test row: it has collapsed to a constant")
    if metrics["test_unparseable_answers"]:
        warnings.append(f"{int(metrics['test_unparseable_answers'])} test answers did not parse as a number")
    table = [{"model": n, **{f"{sp}_{k}": round(v, 5) for sp in ("validation", "test") for k, v in per_model[n][sp].items()}}
             for n in per_model]
    return {
        "metrics": metrics, "table": table, "plots": [], "warnings": warnings, "verdict": verdict,
        "best_baseline": best, "report": table,
        "baselines": {n: {f"{sp}_{k}": v for sp in ("validation", "test") for k, v in per_model[n][sp].items()}
                      for n in per_model if n != "lora"},
        "predictions": preds_out,
    }
