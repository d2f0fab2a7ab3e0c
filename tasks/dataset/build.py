"""Build one dataset version: lake -> the task's frame -> Alpaca records -> a versioned folder.

Tasks: ``direction`` (a day's features -> NEGATIVE / NEUTRAL / POSITIVE next-day move),
``return`` (-> the next-day return in %), ``sentiment`` (a post -> its author's mean sentiment
label) and ``tx-value`` (a window of transactions -> the next one's log value). Labels and their
dead band: :mod:`tasks.dataset.labels`; chronological splits with an embargo:
:mod:`tasks.dataset.split`; frames: :mod:`tasks.dataset.frames`; records and files:
:mod:`tasks.dataset.records`.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from tasks.core.manifests import DatasetManifest
from tasks.core.settings import DatasetSettings, SentimentSettings
from tasks.core.storage import DatasetVersions, Lake
from tasks.dataset.frames import DailyFrame, daily_frame, numeric_feature_columns, sentiment_frame, tx_value_frame
from tasks.dataset.labels import label_counts
from tasks.dataset.prompter import Prompter
from tasks.dataset.records import (
    direction_records,
    fingerprint,
    sentiment_records,
    tx_value_records,
    write_dataset,
)
from tasks.dataset.split import SPLITS

TASKS = ("direction", "return", "sentiment", "tx-value")
CLASS_TASKS = ("direction", "sentiment")
NUMERIC_TASKS = ("return", "tx-value")
LAKE_INPUTS = ("prices", "transactions", "posts", "sentiment")  # counted in the manifest


def task_frame_and_records(lake: Lake, base: DailyFrame, ds: DatasetSettings, assets: list[str],
                           sentiment_settings: SentimentSettings) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """The configured task's frame (saved as the feature table) and its records."""
    prompter = Prompter.load()
    if ds.name in ("direction", "return"):
        return base.frame, direction_records(base, prompter, assets, ds.name)
    if ds.name == "sentiment":
        frame = sentiment_frame(lake, base, sentiment_settings)
        return frame, sentiment_records(frame, prompter)
    frame = tx_value_frame(lake, base, ds)
    return frame, tx_value_records(frame, prompter, ds.tx_window)


def build_dataset_version(lake: Lake, versions: DatasetVersions, *, dataset_settings: DatasetSettings, assets: list[str],
                          settings_hash: str, settings_public: dict[str, Any],
                          sentiment_settings: SentimentSettings | None = None) -> DatasetManifest:
    """Read the lake, build the configured task's records, write a versioned dataset.

    Returns the manifest. Idempotent: the same inputs and settings give the same fingerprint, and
    an existing dataset with that fingerprint is not rewritten.
    """
    ds = dataset_settings
    if ds.name not in TASKS:
        raise ValueError(f"dataset.name must be one of {TASKS}, got {ds.name!r}")
    if sentiment_settings is None:
        sentiment_settings = SentimentSettings()
    base = daily_frame(lake, ds, assets, sentiment_settings)
    frame, records = task_frame_and_records(lake, base, ds, assets, sentiment_settings)
    fp = fingerprint(records, settings_hash)
    version = versions.version(fp)
    plan = base.plan
    manifest = DatasetManifest(
        fingerprint=fp,
        task=ds.name,
        kind="class" if ds.name in CLASS_TASKS else "number",
        target_asset=ds.target_asset,
        start=base.start, end=base.end,
        splits={"train": plan.train, "validation": plan.validation, "test": plan.test},
        embargo_days=plan.embargo_days,
        thresholds=base.thresholds,
        rows={s: sum(1 for r in records if r["split"] == s) for s in (*SPLITS, "predict")},
        label_counts=label_counts(frame) if ds.name in CLASS_TASKS else {},
        inputs={name: len(lake.partition_files(name, base.start, base.end)) for name in LAKE_INPUTS},
        chain_label=base.chain_label,
        numeric_features=numeric_feature_columns(base.frame),
        settings=settings_public,
        path=str(version.dir),
    )
    if not version.exists():
        write_dataset(version, frame, records, manifest)
    versions.mark_latest(fp)
    return manifest
