"""The lake: partitioned parquet files under a local folder or an ``s3://`` prefix.

    <lake>/<dataset>/date=YYYY-MM-DD/<chain>__<dataset>__<first>_<last>.parquet
    <lake>/<dataset>/date=YYYY-MM-DD/_manifest.json     <- written last: "day complete"
    <lake>/_meta/<name>                                  <- small JSON documents (LakeMeta)

Every file appears whole: on local disk it is written under a temporary name and renamed; on S3
it is written to a local temporary file and PUT (an object is visible whole or not at all). A
partition is complete when its manifest exists, and readers only read the files a manifest
lists; a rerun skips complete partitions (and, inside an incomplete one, files that already
exist), which is how a killed run resumes. With ``overwrite`` a partition is rebuilt aside and
made current in one step: locally a hidden staging folder is swapped in; on S3 (no rename) the
new files go to a fresh version folder inside the day, the manifest listing them is written,
then the files it no longer lists are deleted. Old and new files are never mixed.

The rest of the layout (built datasets, models, runs): :mod:`tasks.core.storage`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import fsspec
import polars as pl

from tasks.core.files import json_bytes, write_json
from tasks.core.objectstore import check_bucket, is_remote_uri
from tasks.core.schemas import SCHEMAS, check_schema

MANIFEST = "_manifest.json"
META = "_meta"  # small JSON documents kept in the lake (see LakeMeta)
_STAGING = ".staging"
_TRASH = ".trash"
_VERSION = ".v-"  # S3 overwrite: <day>/.v-<token>/<file>


def block_chunk_name(chain: str, dataset: str, first_block: int, last_block: int) -> str:
    """File name of one block chunk; numbers zero-padded so names sort by block."""
    return f"{chain}__{dataset}__{first_block:010d}_{last_block:010d}.parquet"


# zstd at level 1, not polars' default 3: a 500-block chunk's transactions write in 3.1 ms instead of
# 6.9 (its receipts 2.1 instead of 3.7) for files 3% larger; the ingest writes on the thread that the
# next chunk waits for (bench/results/chain_ingest.md).
PARQUET = {"compression": "zstd", "compression_level": 1, "statistics": True}


@dataclass(frozen=True)
class Partition:
    """A day's partition being written: files go to ``dir``; ``commit`` makes it complete.

    ``dir`` is a ``Path`` on local disk and an ``s3://`` URL on an object store.
    """

    lake: Lake
    dataset: str
    day: date
    dir: Path | str
    staged: bool

    @property
    def _key(self) -> str:
        return self.lake._key(self.dir)

    def has(self, name: str) -> bool:
        if not self.lake.remote:
            return (Path(self.dir) / name).is_file()
        return self.lake.fs.isfile(f"{self._key}/{name}")

    def write(self, df: pl.DataFrame, name: str) -> Path | str:
        df = check_schema(df, self.dataset)
        if not self.lake.remote:
            path = Path(self.dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
            df.write_parquet(tmp, **PARQUET)
            os.replace(tmp, path)
            return path
        with tempfile.TemporaryDirectory(prefix="chainsignal-put-") as tmp:
            local = Path(tmp) / name
            df.write_parquet(local, **PARQUET)
            self.lake.fs.put_file(str(local), f"{self._key}/{name}")  # one PUT: the object appears whole
        return f"{self.dir}/{name}"

    def files(self) -> list[Path | str]:
        if not self.lake.remote:
            return sorted(Path(self.dir).glob("*.parquet"))
        return sorted(self.lake._url(k) for k in self.lake.fs.glob(f"{self._key}/*.parquet"))

    def scan(self, files: list[str] | None = None) -> pl.LazyFrame:
        """Lazy frame over the files written so far (row counts before commit), or over the named ``files``."""
        named = None if files is None else [f"{self.dir}/{n}" if self.lake.remote else Path(self.dir) / n for n in files]
        return self.lake._scan_files(self.dataset, self.files() if named is None else named)

    def commit(self, manifest: dict[str, Any], files: list[str] | None = None) -> Path | str:
        """Write the manifest (the day is then complete) and, if staged, make the new files current.
        ``files``: the file names the manifest lists (default: every parquet file in the folder)."""
        final = self.lake.partition_dir(self.dataset, self.day)
        prefix = f"{self.dir}/".removeprefix(f"{final}/") if self.lake.remote else ""
        body = {
            "dataset": self.dataset,
            "date": self.day.isoformat(),
            "files": [prefix + Path(str(p)).name for p in self.files()] if files is None else [prefix + n for n in files],
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **manifest,
        }
        if self.lake.remote:
            return self._commit_remote(final, body)
        write_json(Path(self.dir) / MANIFEST, body)
        final = Path(final)
        if self.staged:
            trash = Path(self.lake.root) / self.dataset / _TRASH / f"{final.name}-{uuid.uuid4().hex[:8]}"
            if final.exists():
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.replace(final, trash)
            os.replace(self.dir, final)
            shutil.rmtree(trash, ignore_errors=True)
        return final / MANIFEST

    def _commit_remote(self, final: str, body: dict[str, Any]) -> str:
        fs, key = self.lake.fs, self.lake._key(final)
        fs.pipe_file(f"{key}/{MANIFEST}", json_bytes(body))  # from here on readers see the new files only
        if self.staged:
            keep = {f"{key}/{name}" for name in body["files"]} | {f"{key}/{MANIFEST}"}
            stale = [k for k in fs.find(key) if k not in keep]
            if stale:
                fs.rm(stale)
        return f"{final}/{MANIFEST}"


class LakeMeta:
    """One small JSON document kept in the lake beside the data (``<lake>/_meta/<name>``), so every
    host that shares the lake shares it; ``_``-prefixed folders are not datasets to Hive-style readers."""

    def __init__(self, lake: Lake, name: str):
        self.lake, self.name = lake, name
        self.where = (f"{lake.root}/{META}/{name}" if lake.remote else Path(lake.root) / META / name)

    def load(self) -> Any | None:
        """The document, or None when there is none (or it is unreadable: it is only a cache)."""
        try:
            return json.loads(self.lake.fs.cat_file(self.lake._key(self.where)))  # as Lake.manifest reads
        except (OSError, ValueError):
            return None

    def save(self, obj: Any) -> None:
        if self.lake.remote:
            self.lake.fs.pipe_file(self.lake._key(self.where), json_bytes(obj))
        else:
            write_json(Path(self.where), obj)


class Lake:
    """Partitioned parquet files under a local folder or an ``s3://`` prefix.

    ``storage_options`` are s3fs options (endpoint, region; see :func:`s3_options`); with
    ``polars_options`` they make reads go to the same store.
    """

    def __init__(self, root: Path | str, storage_options: dict[str, Any] | None = None,
                 polars_options: dict[str, str] | None = None, check: bool = False):
        self.remote = is_remote_uri(root)
        if self.remote:
            self.root: Path | str = str(root).rstrip("/")
            self.fs, self._root_key = fsspec.core.url_to_fs(self.root, **(storage_options or {}))
            self._root_key = self._root_key.rstrip("/")
            self.polars_options = dict(polars_options or {})
            if check:
                check_bucket(self.fs, self.root, "storage.lake_uri")
        else:
            self.root = Path(str(root).removeprefix("file://"))
            self.fs = fsspec.filesystem("file")
            self._root_key = str(self.root)
            self.polars_options = {}

    # ------------------------------------------------------------------ addressing
    def _key(self, where: Path | str) -> str:
        """fsspec path (``bucket/prefix/...``) of a Path or URL inside this lake."""
        where = str(where)
        if not self.remote:
            return where
        if not where.startswith(str(self.root)):
            raise ValueError(f"{where} is not inside the lake {self.root}")
        return self._root_key + where[len(str(self.root)):]

    def _url(self, key: str) -> str:
        return f"{self.root}{key.removeprefix(self._root_key)}"

    # ------------------------------------------------------------------ layout
    def meta(self, name: str) -> LakeMeta:
        return LakeMeta(self, name)

    def partition_dir(self, dataset: str, day: date) -> Path | str:
        if dataset not in SCHEMAS:
            raise KeyError(f"unknown dataset {dataset!r}; known: {sorted(SCHEMAS)}")
        if self.remote:
            return f"{self.root}/{dataset}/date={day.isoformat()}"
        return Path(self.root) / dataset / f"date={day.isoformat()}"

    def _manifest_key(self, dataset: str, day: date) -> str:
        return f"{self._key(self.partition_dir(dataset, day))}/{MANIFEST}"

    def is_complete(self, dataset: str, day: date) -> bool:
        return self.fs.isfile(self._manifest_key(dataset, day))

    def manifest(self, dataset: str, day: date) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self._manifest_key(dataset, day)))
        except FileNotFoundError:
            return None

    def open_partition(self, dataset: str, day: date, overwrite: bool = False) -> Partition:
        """Where to write a day's files: the final folder (resumable), or a fresh one aside."""
        final = self.partition_dir(dataset, day)
        token = uuid.uuid4().hex[:8]
        if self.remote:  # no folders on S3: nothing to create
            where = f"{final}/{_VERSION}{token}" if overwrite else final
            return Partition(self, dataset, day, where, staged=overwrite)
        if overwrite:
            staging = Path(self.root) / dataset / _STAGING / f"date={day.isoformat()}-{token}"
            staging.mkdir(parents=True)
            return Partition(self, dataset, day, staging, staged=True)
        Path(final).mkdir(parents=True, exist_ok=True)
        return Partition(self, dataset, day, final, staged=False)

    def completed_days(self, dataset: str) -> list[date]:
        if self.remote:  # one paginated LIST of the dataset's prefix
            folders = [key.rsplit("/", 2)[-2] for key in self.fs.glob(f"{self._root_key}/{dataset}/date=*/{MANIFEST}")]
        else:
            base = Path(self.root) / dataset
            folders = [p.parent.name for p in base.glob(f"date=*/{MANIFEST}")] if base.is_dir() else []
        return sorted(date.fromisoformat(name.removeprefix("date=")) for name in folders)

    # ------------------------------------------------------------------ reading
    def partition_files(self, dataset: str, start: date | None = None, end: date | None = None) -> list[Path | str]:
        files: list[Path | str] = []
        for day in self.completed_days(dataset):
            if (start and day < start) or (end and day > end):
                continue
            manifest = self.manifest(dataset, day) or {}
            folder = self.partition_dir(dataset, day)
            files += [f"{folder}/{name}" if self.remote else Path(folder) / name for name in manifest.get("files", [])]
        return files

    def _scan_files(self, dataset: str, files: list[Path | str]) -> pl.LazyFrame:
        schema = SCHEMAS[dataset]
        if not files:
            return pl.LazyFrame(schema=schema)
        if self.remote:
            return pl.scan_parquet([str(f) for f in files], schema=schema, storage_options=self.polars_options)
        return pl.scan_parquet(files, schema=schema)

    def scan(self, dataset: str, start: date | None = None, end: date | None = None) -> pl.LazyFrame:
        """Lazy frame over the complete partitions of ``dataset`` between two days (inclusive)."""
        return self._scan_files(dataset, self.partition_files(dataset, start, end))
