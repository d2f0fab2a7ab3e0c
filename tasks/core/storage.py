"""The only module that knows the directory layout (the lake's own part lives in :mod:`tasks.core.lake`).

    <lake>/<dataset>/date=YYYY-MM-DD/<chain>__<dataset>__<first>_<last>.parquet
    <lake>/<dataset>/date=YYYY-MM-DD/_manifest.json     <- written last: "day complete"
    <data_dir>/datasets/<task>/<fingerprint>/            <- built datasets (DatasetVersion)
    <data_dir>/datasets/<task>/LATEST                    <- the newest build's fingerprint
    <data_dir>/models/<name>/                            <- base models built on the fly
    <data_dir>/runs/<run_id>/                            <- training scratch space

``<lake>`` is ``<data_dir>/lake`` on local disk, or an ``s3://bucket/prefix`` (``storage.lake_uri``)
that workers on several hosts share; the same code serves both through fsspec. Everything else
stays on the local disk of the host that made it.

Files appear whole, and a lake partition only when complete: :mod:`tasks.core.lake` says how.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from tasks.core.errors import NotFoundError
from tasks.core.errors import StorageError as StorageError  # re-exported: callers catch it from here
from tasks.core.files import read_json, write_bytes_atomic, write_json
from tasks.core.lake import Lake, LakeMeta, Partition, block_chunk_name
from tasks.core.manifests import DatasetManifest
from tasks.core.objectstore import check_bucket, is_remote_uri, s3_options

# Re-exported: callers take every storage name from here.
__all__ = ["DatasetManifest", "DatasetVersion", "DatasetVersions", "Lake", "LakeMeta", "Partition", "StorageError",
           "Workspace", "block_chunk_name", "read_json", "s3_options", "write_bytes_atomic", "write_json"]


@dataclass(frozen=True)
class DatasetVersion:
    """One built dataset: its records per split (Alpaca JSON), the feature table, a HF DatasetDict
    and the manifest, written last (a folder with a manifest is complete)."""

    dir: Path

    @property
    def fingerprint(self) -> str:
        return self.dir.name

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def features_path(self) -> Path:
        return self.dir / "features.parquet"

    @property
    def hf_dir(self) -> Path:
        """The HF ``DatasetDict`` (``datasets.load_from_disk``)."""
        return self.dir / "hf"

    def records_path(self, split: str) -> Path:
        return self.dir / f"{split}.json"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    @property
    def manifest(self) -> DatasetManifest:
        """Read from disk on every access: hold on to it."""
        return DatasetManifest.from_dict(read_json(self.manifest_path))

    def read_records(self, split: str) -> list[dict[str, Any]]:
        """A split's Alpaca records; none when the split is empty (no file is written for it)."""
        path = self.records_path(split)
        return read_json(path) if path.is_file() else []


@dataclass(frozen=True)
class DatasetVersions:
    """The versions of one task's dataset, by fingerprint, and which one is the latest."""

    root: Path
    task: str

    @property
    def latest_pointer(self) -> Path:
        return self.root / "LATEST"

    def version(self, fingerprint: str) -> DatasetVersion:
        return DatasetVersion(self.root / fingerprint)

    def latest(self) -> DatasetVersion:
        if not self.latest_pointer.is_file():
            raise NotFoundError(f"no {self.task} dataset built yet under {self.root}: run `chainsignal build-dataset`")
        return self.version(self.latest_pointer.read_text().strip())

    def mark_latest(self, fingerprint: str) -> None:
        write_bytes_atomic(self.latest_pointer, (fingerprint + "\n").encode())


class Workspace:
    """The lake (local or on an object store) and everything under ``data_dir`` that is not the lake."""

    def __init__(self, data_dir: Path, lake_uri: str | None = None, artifacts_uri: str | None = None,
                 s3_endpoint_url: str | None = None, s3_region: str | None = None, check: bool = False):
        self.data_dir = Path(data_dir)
        self.artifacts_uri = artifacts_uri
        opts = s3_options(s3_endpoint_url, s3_region)
        if is_remote_uri(lake_uri):
            self.lake = Lake(lake_uri, opts["fs"], opts["polars"], check=check)
        else:
            self.lake = Lake(lake_uri or self.data_dir / "lake")  # a path or file:// URI
        if check and is_remote_uri(artifacts_uri):
            fs, _ = fsspec.core.url_to_fs(artifacts_uri, **opts["fs"])
            check_bucket(fs, artifacts_uri, "storage.artifacts_uri")

    @classmethod
    def from_settings(cls, settings: Any) -> Workspace:
        """Local folders under data_dir; the lake and MLflow artifacts possibly on S3 (checked here, once)."""
        st = settings.storage
        return cls(st.data_dir, lake_uri=st.lake_uri, artifacts_uri=st.artifacts_uri,
                   s3_endpoint_url=st.s3_endpoint_url, s3_region=st.s3_region, check=True)

    def datasets(self, task: str) -> DatasetVersions:
        return DatasetVersions(self.data_dir / "datasets" / task, task)

    def dataset_version(self, task: str, fingerprint: str | None = None) -> DatasetVersion:
        """A built dataset; the latest one when no fingerprint is given."""
        versions = self.datasets(task)
        return versions.latest() if fingerprint is None else versions.version(fingerprint)

    def dataset_dir(self, task: str, fingerprint: str | None = None) -> Path:
        """A built dataset's folder; the latest one when no fingerprint is given."""
        return self.dataset_version(task, fingerprint).dir

    def model_dir(self, name: str) -> Path:
        return self.data_dir / "models" / name

    def run_dir(self, run_id: str) -> Path:
        return self.data_dir / "runs" / run_id

    def cache_path(self, name: str) -> Path:
        return self.data_dir / "cache" / name

    def model_hash_cache(self) -> Path:
        """Per-file SHA-256 of base models, by path, size and mtime (read once, not per run)."""
        return self.cache_path("model_sha256.json")

    def credit_ledger(self, chain: str) -> Path:
        """Credits spent per UTC day against the provider (the daily budget survives restarts)."""
        return self.cache_path(f"{chain}_credits_by_utc_day.json")

    def block_ranges_cache(self, chain: str) -> LakeMeta:
        """Each day's block range, in the lake: chain facts, shared by every host using the lake."""
        return self.lake.meta(f"{chain}_day_block_ranges.json")

    def reset_dir(self, path: Path) -> Path:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def mlflow_artifacts_dir(self) -> Path | str:
        """Where MLflow keeps artifacts: ``storage.artifacts_uri`` (``s3://...``) or a local folder."""
        if is_remote_uri(self.artifacts_uri):
            return str(self.artifacts_uri).rstrip("/")
        return Path(self.artifacts_uri.removeprefix("file://")) if self.artifacts_uri else self.data_dir / "mlartifacts"
