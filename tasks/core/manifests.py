"""The manifest of a built dataset, typed: what ``build-dataset`` wrote and every later stage reads.

On disk it stays the JSON it always was (``manifest.json`` beside the records; where that lives is
:mod:`tasks.core.storage`'s business); :meth:`DatasetManifest.to_dict` gives the same keys in the
same order, so the file, the flow's return value and the copy logged to MLflow do not change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any, Literal


def _day(value: str | date | None) -> date | None:
    return value if value is None or isinstance(value, date) else date.fromisoformat(value)


@dataclass(frozen=True)
class DatasetManifest:
    """One dataset version's facts. Fields after ``task`` have defaults so older manifests still load."""

    fingerprint: str  # sha256 of the records and the settings that shaped them, 16 hex digits: the version's name
    task: str  # direction | return | sentiment | tx-value
    kind: Literal["class", "number"] = "class"  # what the model answers: a label, or a number
    target_asset: str | None = None  # asset whose next-day move is labelled (direction, return)
    start: date | None = None  # first day read from the lake
    end: date | None = None  # last day read from the lake (the predict day when it has no label yet)
    splits: dict[str, tuple[date, date]] = field(default_factory=dict)  # train/validation/test: first and last day
    embargo_days: int = 0  # days dropped before validation and before test
    thresholds: dict[str, float] = field(default_factory=dict)  # negative_below / positive_above (next-day return)
    rows: dict[str, int] = field(default_factory=dict)  # records per split, predict included
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # per split and label (class tasks)
    inputs: dict[str, int] = field(default_factory=dict)  # lake files read, per lake dataset
    chain_label: str = ""  # how the chain data is described in records and tags
    numeric_features: list[str] = field(default_factory=list)  # feature columns the numeric baselines use
    settings: dict[str, Any] = field(default_factory=dict)  # the resolved settings, public part
    path: str = ""  # the version's folder when it was built

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetManifest:
        """From the JSON document; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("start", "end"):
            if key in values:
                values[key] = _day(values[key])
        if "splits" in values:
            values["splits"] = {k: (_day(v[0]), _day(v[1])) for k, v in values["splits"].items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, keys in the order ``build-dataset`` has always written them."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}  # the caller's to change
        out["start"] = self.start.isoformat() if self.start else None
        out["end"] = self.end.isoformat() if self.end else None
        out["splits"] = {k: [a.isoformat(), b.isoformat()] for k, (a, b) in self.splits.items()}
        return out
