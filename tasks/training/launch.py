"""Multi-process LoRA training on one host: torchrun starts N processes, each runs the training core.

Two halves:

- the parent (:func:`launch_training`, called by the train-lora flow when ``train.nproc > 1``)
  writes a job file, runs ``python -m torch.distributed.run --standalone --nproc_per_node N -m
  tasks.training.launch JOB`` as a subprocess, relays its output, and reads rank 0's result back;
- the worker (:func:`main`, what torchrun starts N times) loads the job, joins the process group
  (``train.distributed``) and calls :func:`tasks.training.train.train_lora_adapter`. Rank 0 alone logs the
  per-step metrics to MLflow (into the flow's run, or a run of its own) and saves the adapter;
  every rank writes ``result-rank<R>.json`` so the parent can check that DDP replicas agree.

The worker also runs under ``accelerate launch --multi_gpu -m tasks.training.launch JOB`` (same environment
variables; tests/training/test_train_distributed.py runs it so). Like tasks/training/train.py this module imports neither
prefect nor, outside rank 0, mlflow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tasks.core.errors import LaunchError
from tasks.core.logs import get_logger
from tasks.core.settings import REPO_ROOT, TrainSettings

JOB_FILE = "job.json"
StepHook = Callable[[dict[str, float], int], None]


# ----------------------------------------------------------------------------- parent side
def torchrun_command(nproc: int, job_path: Path, worker: str = "tasks.training.launch") -> list[str]:
    """The command line the parent runs (``worker``: a module name, or a path to a .py script)."""
    target = [worker] if worker.endswith(".py") else ["-m", worker]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *target, str(job_path)]


def write_job(work_dir: Path, cfg: TrainSettings, base_model: str, train_records: Sequence[dict], val_records: Sequence[dict],
              out_dir: Path, *, checkpoint_dir: Path | None = None, mlflow: dict[str, Any] | None = None) -> Path:
    """Everything a worker needs, as files under ``work_dir``; returns the job file's path.

    ``mlflow``: ``{"tracking_uri", "run_id"}`` logs into an existing run (the flow's),
    ``{"tracking_uri", "experiment"[, "run_name"]}`` makes rank 0 open a run of its own; None: no MLflow.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    for old in work_dir.glob("result-rank*.json"):
        old.unlink()  # a result left by an earlier launch must not pass for this one's
    knobs = cfg.model_dump(mode="json")
    (work_dir / "train.json").write_text(json.dumps(list(train_records)))
    (work_dir / "validation.json").write_text(json.dumps(list(val_records)))
    job = {
        "train": {**knobs, "distributed": True}, "base_model": str(base_model),
        "train_records": str(work_dir / "train.json"), "val_records": str(work_dir / "validation.json"),
        "out_dir": str(out_dir), "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
        "result_dir": str(work_dir), "mlflow": mlflow,
    }
    path = work_dir / JOB_FILE
    path.write_text(json.dumps(job, indent=2))
    return path


def launch_training(cfg: TrainSettings, base_model: str, train_records: Sequence[dict], val_records: Sequence[dict],
                    out_dir: Path, *, nproc: int, work_dir: Path, checkpoint_dir: Path | None = None,
                    mlflow: dict[str, Any] | None = None, worker: str = "tasks.training.launch",
                    env: dict[str, str] | None = None, timeout_s: float | None = None):
    """Train on ``nproc`` processes of this host through torchrun; rank 0's :class:`TrainResult`.

    Raises :class:`LaunchError` when torchrun fails or when DDP replicas ended with different
    LoRA weights (they must be bit-identical after every step).
    """
    from tasks.training.train import TrainResult

    log = get_logger()
    job = write_job(work_dir, cfg, base_model, train_records, val_records, out_dir, checkpoint_dir=checkpoint_dir,
                    mlflow=mlflow)
    cmd = torchrun_command(nproc, job, worker)
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [child_env.get("PYTHONPATH")])])
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    log.info("launching %d training processes: %s", nproc, " ".join(cmd))
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env,
                          cwd=str(REPO_ROOT)) as proc:
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                line = line.rstrip()
                tail.append(line)
                log.info("%s", line)
            rc = proc.wait(timeout=timeout_s)
        except BaseException:
            proc.kill()
            raise
    results = read_results(work_dir, nproc)
    if rc != 0 or 0 not in results:
        raise LaunchError(f"torchrun with {nproc} processes failed (exit {rc}): {last_error(tail)}")
    digests = {r.get("lora_digest") for r in results.values()}
    if len(results) != nproc or (results[0].get("parallelism") == "ddp" and len(digests) != 1):
        raise LaunchError(f"the {nproc} training processes did not end with the same LoRA weights "
                          f"({len(results)} results, {len(digests)} different digests)")
    fields = set(TrainResult.__dataclass_fields__)
    return TrainResult(**{k: v for k, v in results[0].items() if k in fields})


def read_results(result_dir: Path, nproc: int) -> dict[int, dict[str, Any]]:
    out = {}
    for rank in range(nproc):
        path = result_dir / f"result-rank{rank}.json"
        if path.is_file():
            out[rank] = json.loads(path.read_text())
    return out


def last_error(lines: Sequence[str]) -> str:
    """The most telling line of a failed run's output: the last exception line, else the last line."""
    for line in reversed(list(lines)):
        text = line.split("]:", 1)[-1].strip() if line.startswith("[") else line.strip()
        if "ChildFailedError" in text or "torch.distributed.elastic" in text:
            continue  # torchrun's own summary names the failing child, not the cause
        if text and ("Error" in text or "Exception" in text) and not text.startswith(("File ", "Traceback")):
            return text[:300]
    return (lines[-1] if lines else "no output")[:300]


# ----------------------------------------------------------------------------- worker side
def mlflow_logger(spec: dict[str, Any] | None, settings_params: dict[str, Any], world: int):
    """(log_metrics callback, finish callback) for rank 0; no-ops without an MLflow spec."""
    if not spec:
        return (lambda metrics, step: None), (lambda result: None)
    import time

    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(spec["tracking_uri"])
    run_id = spec.get("run_id")
    own_run = run_id is None
    if own_run:
        exp = client.get_experiment_by_name(spec["experiment"])
        exp_id = exp.experiment_id if exp else client.create_experiment(spec["experiment"])
        run_id = client.create_run(exp_id, run_name=spec.get("run_name"), tags={"model_kind": "lora"}).info.run_id
        params = [Param(f"train.{k}", json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                  for k, v in settings_params.items()]
        for i in range(0, len(params), 90):
            client.log_batch(run_id, params=params[i:i + 90])
    client.log_batch(run_id, tags=[RunTag("world_size", str(world))])

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None])

    def finish(result) -> None:
        if own_run:
            log_metrics({"train_tokens_per_s": result.tokens_per_s, "trainable_params": result.trainable_params,
                         "peak_memory_mb": result.peak_memory_mb, "train_seconds": result.seconds}, result.steps)
            client.log_batch(run_id, tags=[RunTag("adapter_dir", result.adapter_dir)])
            client.set_terminated(run_id)

    return log_metrics, finish


def run_job(job_path: Path, on_step: StepHook | None = None):
    """One torchrun process: train as the job says; rank 0 logs MLflow; every rank writes its result."""
    import torch.distributed as dist

    from tasks.training.distributed import init_distributed
    from tasks.training.model import pick_device
    from tasks.training.train import train_lora_adapter

    job = json.loads(Path(job_path).read_text())
    cfg = TrainSettings(**job["train"])
    rank, world, _ = init_distributed(True, pick_device(cfg.device))
    log_metrics, finish = (mlflow_logger(job.get("mlflow"), job["train"], world) if rank == 0
                           else ((lambda m, s: None), (lambda r: None)))

    def on_metrics(metrics: dict[str, float], step: int) -> None:
        log_metrics(metrics, step)
        if on_step is not None:
            on_step(metrics, step)

    try:
        result = train_lora_adapter(
            cfg, job["base_model"], json.loads(Path(job["train_records"]).read_text()),
            json.loads(Path(job["val_records"]).read_text()), Path(job["out_dir"]), on_metrics,
            checkpoint_dir=Path(job["checkpoint_dir"]) if job.get("checkpoint_dir") else None,
        )
        if rank == 0:
            finish(result)
        out = Path(job["result_dir"]) / f"result-rank{rank}.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({**result.as_dict(), "rank": rank}, indent=2))
        tmp.replace(out)
        dist.barrier()  # nobody tears the group down while rank 0 still logs (gloo aborts the process otherwise)
        return result
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="One process of a multi-process LoRA run (started by torchrun).")
    ap.add_argument("job", type=Path, help="job.json written by tasks.training.launch.write_job")
    args = ap.parse_args(argv)
    run_job(args.job)
    exit_now()


def exit_now() -> None:
    """End a finished worker process without the interpreter's teardown. Its result is written and
    its process group destroyed; in a fresh-clone CI run a gloo process (FSDP, CPU) still aborted at
    exit after that ("terminate called without an active exception": a C++ thread still joinable
    when the process's destructors ran), and torchrun then reports the whole run as failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
