"""The daily signal: the champion adapter scores the newest day; past signals meet what happened.

The champion is the registered model version carrying the ``champion`` alias in MLflow (the policy:
``tasks/tracking/champion.py``). Its adapter (and, for the on-the-fly tiny model, its base model) is
downloaded from the run's artifacts, so what predicts is exactly what was evaluated.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from tasks.core.errors import NotFoundError
from tasks.core.labelset import LABELS
from tasks.core.schemas import SIGNALS
from tasks.core.storage import DatasetVersion
from tasks.evaluation.scoring import load_scorer
from tasks.training.fastpath.attention import sdpa_without_cudnn


@sdpa_without_cudnn
def score_newest_day(adapter_dir: Path, base_model: str, dataset_dir: Path, cutoff_len: int, device: str = "auto",
                     model_type: str = "causal") -> dict[str, Any]:
    """Label and class probabilities for the dataset's ``predict`` split (its newest, unlabelled day)."""
    records = DatasetVersion(Path(dataset_dir)).read_records("predict")
    if not records:
        raise NotFoundError(f"{dataset_dir}: no unlabelled newest day to predict (the predict split is empty)")
    scorer = load_scorer(adapter_dir, base_model, cutoff_len, model_type=model_type, kind="class", device=device)
    labels, probs = scorer.labels(records[-1:])
    return {"date": records[-1]["date"], "label": labels[0], "probs": dict(zip(LABELS, probs[0].tolist(), strict=True))}


def signal_frame(scored: dict[str, Any], *, target_asset: str, model_name: str, model_version: str, run_id: str,
                 dataset_fingerprint: str) -> pl.DataFrame:
    day = datetime.fromisoformat(scored["date"]).date()
    return pl.DataFrame([{
        "date": day, "target_date": day + timedelta(days=1), "target_asset": target_asset, "label": scored["label"],
        "prob_negative": scored["probs"]["NEGATIVE"], "prob_neutral": scored["probs"]["NEUTRAL"],
        "prob_positive": scored["probs"]["POSITIVE"], "model_name": model_name, "model_version": str(model_version),
        "run_id": run_id, "dataset_fingerprint": dataset_fingerprint, "created_at": datetime.now(UTC),
    }], schema=SIGNALS)


def track_record(signals: pl.LazyFrame, features: pl.LazyFrame, window: int = 30) -> pl.DataFrame:
    """Each past signal joined with the realized label of its day (null until known), with the
    rolling hit rate over the last ``window`` resolved signals."""
    realized = features.select("date", pl.col("label").alias("realized"), "next_day_return")
    return (
        signals.join(realized, on="date", how="left")
        .sort("date")
        .with_columns((pl.col("label") == pl.col("realized")).alias("hit"))
        .with_columns(pl.col("hit").cast(pl.Float64).rolling_mean(window, min_samples=1).alias("rolling_accuracy"))
        .select("date", "target_date", "label", "realized", "next_day_return", "hit", "rolling_accuracy", "model_version")
        .collect()
    )
