"""The evaluation's figures (matplotlib, headless): the confusion matrix, LoRA against the baselines,
the backtest's growth curves and the reliability diagram. Each writes one PNG and returns its path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.labelset import LABELS
from tasks.evaluation.metrics import confusion


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display on workers); loaded on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(y_true: Sequence[str], y_pred: Sequence[str], title: str, path: Path) -> Path:
    plt = _pyplot()
    cm = confusion(y_true, y_pred)
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
    plt = _pyplot()
    names = [r["model"] for r in table]
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(names) + 1.5), 3.8), dpi=110)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [r["validation_macro_f1"] for r in table], 0.4, label="validation")
    ax.bar(x + 0.2, [r["test_macro_f1"] for r in table], 0.4, label="test")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)  # long baseline names never overlap
    ax.set_ylabel("macro-F1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("LoRA vs baselines (same splits)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_backtest(dates: Sequence[Any], curves: dict[str, np.ndarray], title: str, path: Path) -> Path:
    plt = _pyplot()
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


def plot_reliability(rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Reliability (calibration) diagram: per class, the mean forecast probability of each bin against how
    often the class happened; a calibrated model sits on the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=110)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfectly calibrated")
    for lab in LABELS:
        pts = sorted((r["forecast"], r["observed"]) for r in rows if r["class"] == lab)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=lab)
    ax.set_xlabel("forecast probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
