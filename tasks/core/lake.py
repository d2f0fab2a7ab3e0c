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

A manifest that does not read (truncated, not JSON) means the day is not committed: readers skip
it, ``is_complete`` says no, so the next run of its ingest writes the day again and replaces the
manifest; a warning names the file once. On local disk, writers lock the days they write, and
what a crashed writer left (temporary files, staging and trash folders, a half-done swap) is
settled by the next one: :mod:`tasks.core.lakedisk`. A full disk is one line naming the file
(:class:`~tasks.core.errors.DiskFullError`), with no half-written file left.

The rest of the layout (built datasets, models, runs): :mod:`tasks.core.storage`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import fsspec
import polars as pl

from tasks.core import lakedisk
from tasks.core.files import disk_full_error, is_disk_full, json_bytes, write_json, written_whole
from tasks.core.logs import get_logger
from tasks.core.objectstore import check_bucket, is_remote_uri
from tasks.core.schemas import SCHEMAS, check_schema

MANIFEST = "_manifest.json"
META = "_meta"  # small JSON documents kept in the lake (see LakeMeta)
_STAGING = lakedisk.STAGING
_TRASH = lakedisk.TRASH
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
    lock: lakedisk.DayLock | None = field(default=None, compare=False, repr=False)  # local disk: held until commit

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
            with written_whole(path) as tmp:
                _write_parquet(df, tmp)
            return path
        with tempfile.TemporaryDirectory(prefix="chainsignal-put-") as tmp:
            local = Path(tmp) / name
            try:
                _write_parquet(df, local)
            except OSError as exc:
                if is_disk_full(exc):  # the local copy, on the way to the object store
                    raise disk_full_error(local, exc) from exc
                raise
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
        write_json(Path(self.dir) / MANIFEST, body)  # a staged folder is complete from here (lakedisk)
        final = Path(final)
        if self.staged:
            trash = Path(self.lake.root) / self.dataset / _TRASH / f"{final.name}-{uuid.uuid4().hex[:8]}"
            if final.exists():
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.replace(final, trash)
            # a crash here leaves the day without a folder: its next reader or writer moves the staging in
            os.replace(self.dir, final)
            shutil.rmtree(trash, ignore_errors=True)
        if self.lock is not None:
            self.lock.release()
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


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    try:
        df.write_parquet(path, **PARQUET)
    except pl.exceptions.PolarsError:
        # polars words IO errors as text (a full disk can read "Invalid thrift: transport error"): once
        # more through Python, whose OSError says which (a full disk is then a DiskFullError)
        buffer = io.BytesIO()
        df.write_parquet(buffer, **PARQUET)
        path.write_bytes(buffer.getbuffer())


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
            # absolute: fsspec answers a batch read with absolute paths, so a relative root (the default data_dir
            # "var") would find no manifest under the keys it asked for
            self.root = Path(str(root).removeprefix("file://")).absolute()
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
        """Whether the day is committed: its manifest exists and reads."""
        return self.manifest(dataset, day) is not None

    def manifest(self, dataset: str, day: date, *, strict: bool = False) -> dict[str, Any] | None:
        """The day's manifest; None when it has none, or (unless ``strict``: then the ValueError is
        raised) when it does not read: the day is then not committed, and a warning names the file."""
        key = self._manifest_key(dataset, day)
        try:
            raw = self.fs.cat_file(key)
        except FileNotFoundError:
            if self.remote or not lakedisk.recover_day(Path(self.root) / dataset, f"date={day.isoformat()}"):
                return None
            try:  # an overwrite interrupted between its renames, just settled
                raw = self.fs.cat_file(key)
            except FileNotFoundError:
                return None
        return _read_manifest(self._url(key), raw, strict)

    def open_partition(self, dataset: str, day: date, overwrite: bool = False) -> Partition:
        """Where to write a day's files: the final folder (resumable), or a fresh one aside."""
        final = self.partition_dir(dataset, day)
        token = uuid.uuid4().hex[:8]
        if self.remote:  # no folders on S3: nothing to create
            where = f"{final}/{_VERSION}{token}" if overwrite else final
            return Partition(self, dataset, day, where, staged=overwrite)
        lock = lakedisk.open_day(Path(self.root) / dataset, Path(final).name)  # settles what crashed writers left
        if overwrite:
            staging = Path(self.root) / dataset / _STAGING / f"date={day.isoformat()}-{token}"
            staging.mkdir(parents=True)
            return Partition(self, dataset, day, staging, staged=True, lock=lock)
        Path(final).mkdir(parents=True, exist_ok=True)
        return Partition(self, dataset, day, final, staged=False, lock=lock)

    def _manifest_keys(self, dataset: str) -> dict[date, str]:
        """Every day of ``dataset`` with a manifest file, readable or not."""
        if self.remote:  # one paginated LIST of the dataset's prefix
            keys = self.fs.glob(f"{self._root_key}/{dataset}/date=*/{MANIFEST}")
        else:
            base = Path(self.root) / dataset
            for name in lakedisk.half_done_days(base) if base.is_dir() else []:
                lakedisk.recover_day(base, name)
            keys = [str(p) for p in base.glob(f"date=*/{MANIFEST}")] if base.is_dir() else []
        return {date.fromisoformat(k.rsplit("/", 2)[-2].removeprefix("date=")): k for k in keys}

    def manifests(self, dataset: str, start: date | None = None, end: date | None = None) -> dict[date, dict[str, Any]]:
        """The committed days of ``dataset`` between two days (inclusive) and their manifests, by day;
        days whose manifest does not read are not committed (a warning names each file)."""
        keys = {d: k for d, k in sorted(self._manifest_keys(dataset).items())
                if not ((start and d < start) or (end and d > end))}
        raws = self.fs.cat(list(keys.values()), on_error="return") if keys else {}
        found = {}
        for day, key in keys.items():
            raw = raws.get(key, FileNotFoundError(key))
            doc = None if isinstance(raw, BaseException) else _read_manifest(self._url(key), raw, strict=False)
            if doc is not None:
                found[day] = doc
        return found

    def completed_days(self, dataset: str, *, include_unreadable: bool = False) -> list[date]:
        """The committed days of ``dataset``; ``include_unreadable``: also those whose manifest does not
        read (``chainsignal status`` names them)."""
        if include_unreadable:
            return sorted(self._manifest_keys(dataset))
        return list(self.manifests(dataset))

    # ------------------------------------------------------------------ reading
    def partition_files(self, dataset: str, start: date | None = None, end: date | None = None) -> list[Path | str]:
        files: list[Path | str] = []
        for day, manifest in self.manifests(dataset, start, end).items():
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


_warned: set[tuple[str, int]] = set()


def _read_manifest(where: str, raw: bytes, strict: bool) -> dict[str, Any] | None:
    """A manifest's document; an unreadable one raises its ValueError when ``strict``, else is None
    with one warning per file and content."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("files", []), list):
            raise ValueError("not a manifest (a JSON object with a list of files)")
        return doc
    except ValueError as exc:
        if strict:
            raise
        if (where, hash(raw)) not in _warned:
            _warned.add((where, hash(raw)))
            get_logger().warning("unreadable manifest %s (%s): the day is not committed and is skipped; the next "
                                 "ingest of that day writes it again", where, type(exc).__name__)
        return None
