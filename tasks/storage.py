"""The only module that knows the directory layout.

    <data_dir>/lake/<dataset>/date=YYYY-MM-DD/<chain>__<dataset>__<first>_<last>.parquet
    <data_dir>/lake/<dataset>/date=YYYY-MM-DD/_manifest.json     <- written last: "day complete"
    <data_dir>/datasets/<task>/<fingerprint>/                     <- built datasets
    <data_dir>/models/<name>/                                     <- base models built on the fly
    <data_dir>/runs/<run_id>/                                     <- training scratch space

Every file is written under a temporary name and renamed into place, so a file that exists is
whole. A partition is complete when its manifest exists; a rerun skips complete partitions (and,
inside an incomplete one, files that already exist), which is how a killed run resumes. With
``overwrite`` a partition is rebuilt in a hidden staging folder and swapped in at the end, so
readers never see half of it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from tasks.schemas import SCHEMAS, check_schema

MANIFEST = "_manifest.json"
_STAGING = ".staging"
_TRASH = ".trash"


def block_chunk_name(chain: str, dataset: str, first_block: int, last_block: int) -> str:
    """File name of one block chunk; numbers zero-padded so names sort by block."""
    return f"{chain}__{dataset}__{first_block:010d}_{last_block:010d}.parquet"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@dataclass(frozen=True)
class Partition:
    """A day's partition being written: files go to ``dir``; ``commit`` makes it complete."""

    lake: "Lake"
    dataset: str
    day: date
    dir: Path
    staged: bool

    def has(self, name: str) -> bool:
        return (self.dir / name).is_file()

    def write(self, df: pl.DataFrame, name: str) -> Path:
        df = check_schema(df, self.dataset)
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        df.write_parquet(tmp, compression="zstd", statistics=True)
        os.replace(tmp, path)
        return path

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("*.parquet"))

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Write the manifest (the day is then complete) and, if staged, swap the folder in."""
        body = {
            "dataset": self.dataset,
            "date": self.day.isoformat(),
            "files": [p.name for p in self.files()],
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **manifest,
        }
        write_json(self.dir / MANIFEST, body)
        final = self.lake.partition_dir(self.dataset, self.day)
        if self.staged:
            trash = self.lake.root / self.dataset / _TRASH / f"{final.name}-{uuid.uuid4().hex[:8]}"
            if final.exists():
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.replace(final, trash)
            os.replace(self.dir, final)
            shutil.rmtree(trash, ignore_errors=True)
        return final / MANIFEST


class Lake:
    """Partitioned parquet files under ``<data_dir>/lake``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # ------------------------------------------------------------------ layout
    def partition_dir(self, dataset: str, day: date) -> Path:
        if dataset not in SCHEMAS:
            raise KeyError(f"unknown dataset {dataset!r}; known: {sorted(SCHEMAS)}")
        return self.root / dataset / f"date={day.isoformat()}"

    def is_complete(self, dataset: str, day: date) -> bool:
        return (self.partition_dir(dataset, day) / MANIFEST).is_file()

    def manifest(self, dataset: str, day: date) -> dict[str, Any] | None:
        path = self.partition_dir(dataset, day) / MANIFEST
        return read_json(path) if path.is_file() else None

    def open_partition(self, dataset: str, day: date, overwrite: bool = False) -> Partition:
        """Where to write a day's files: the final folder (resumable), or a fresh staging one."""
        if overwrite:
            staging = self.root / dataset / _STAGING / f"date={day.isoformat()}-{uuid.uuid4().hex[:8]}"
            staging.mkdir(parents=True)
            return Partition(self, dataset, day, staging, staged=True)
        final = self.partition_dir(dataset, day)
        final.mkdir(parents=True, exist_ok=True)
        return Partition(self, dataset, day, final, staged=False)

    def completed_days(self, dataset: str) -> list[date]:
        base = self.root / dataset
        if not base.is_dir():
            return []
        return sorted(
            date.fromisoformat(p.parent.name.removeprefix("date="))
            for p in base.glob(f"date=*/{MANIFEST}")
        )

    # ------------------------------------------------------------------ reading
    def partition_files(self, dataset: str, start: date | None = None, end: date | None = None) -> list[Path]:
        files: list[Path] = []
        for day in self.completed_days(dataset):
            if (start and day < start) or (end and day > end):
                continue
            manifest = self.manifest(dataset, day) or {}
            files += [self.partition_dir(dataset, day) / name for name in manifest.get("files", [])]
        return files

    def scan(self, dataset: str, start: date | None = None, end: date | None = None) -> pl.LazyFrame:
        """Lazy frame over the complete partitions of ``dataset`` between two days (inclusive)."""
        files = self.partition_files(dataset, start, end)
        schema = SCHEMAS[dataset]
        if not files:
            return pl.LazyFrame(schema=schema)
        return pl.scan_parquet(files, schema=schema)


class Workspace:
    """Everything under ``data_dir`` that is not the lake."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.lake = Lake(self.data_dir / "lake")

    def datasets_root(self, task: str) -> Path:
        return self.data_dir / "datasets" / task

    def dataset_dir(self, task: str, fingerprint: str | None = None) -> Path:
        """A built dataset's folder; the latest one when no fingerprint is given."""
        if fingerprint is None:
            pointer = self.latest_dataset_pointer(task)
            if not pointer.is_file():
                raise FileNotFoundError(f"no {task} dataset built yet under {self.datasets_root(task)}: run `chainsignal build-dataset`")
            fingerprint = pointer.read_text().strip()
        path = self.datasets_root(task) / fingerprint
        return path

    def latest_dataset_pointer(self, task: str) -> Path:
        return self.datasets_root(task) / "LATEST"

    def model_dir(self, name: str) -> Path:
        return self.data_dir / "models" / name

    def run_dir(self, run_id: str) -> Path:
        return self.data_dir / "runs" / run_id

    def cache_path(self, name: str) -> Path:
        return self.data_dir / "cache" / name

    def block_ranges_cache(self, chain: str) -> Path:
        return self.cache_path(f"{chain}_day_block_ranges.json")

    def mlflow_artifacts_dir(self) -> Path:
        return self.data_dir / "mlartifacts"

    def reset_dir(self, path: Path) -> Path:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    @staticmethod
    def paths_exist(paths: Iterable[Path]) -> bool:
        return all(p.exists() for p in paths)
