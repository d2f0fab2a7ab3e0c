"""train-lora: LoRA adapters on the latest (or a given) dataset version, tracked in MLflow.

Logs every setting, the dataset version (as an MLflow dataset input), per-step loss and
throughput, the adapter and tokenizer (and, for the on-the-fly tiny model, the base model) as
artifacts, registers the adapter as a new version of ``tracking.registered_model`` and then runs
``evaluate`` on the same run. Parameters left as None keep the value from settings.

With ``train.nproc`` > 1 the training runs in that many processes (one per GPU) started by
torchrun (tasks/training/launch.py): DDP, or FSDP with ``train.parallelism = "fsdp"``; rank 0 logs
the per-step metrics into this flow's MLflow run and saves the adapter; the flow logs the rest.

Run locally:  chainsignal train --epochs 3 --lora-r 8
              CHAINSIGNAL_TRAIN__NPROC=4 chainsignal train      (4 GPUs of this host)
Deployed:     prefect deployment run train-lora/train-lora -p epochs=5 -p nproc=4
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import settings_for, workspace
from flows.evaluate import evaluate
from tasks.dataset.prompter import Prompter
from tasks.ops.orchestration import notify_failure
from tasks.ops.runs import publish_summary, started
from tasks.tracking.tracker import MlflowTracker, base_model_sha256, git_commit, run_name
from tasks.training.tinymodel import resolve_base_model


@flow(name="train-lora", log_prints=True, on_failure=[notify_failure])
def train_lora(
    dataset: str | None = None,
    base_model: str | None = None,
    lora_r: int | None = None,
    lora_alpha: int | None = None,
    lora_dropout: float | None = None,
    batch_size: int | None = None,
    micro_batch_size: int | None = None,
    epochs: float | None = None,
    learning_rate: float | None = None,
    cutoff_len: int | None = None,
    seed: int | None = None,
    model_kind: str | None = None,
    run_evaluation: bool = True,
    nproc: int | None = None,
    parallelism: str | None = None,
    target_modules: list[str] | None = None,
    train_on_inputs: bool | None = None,
    encoder_lora_layers: int | None = None,
    precision: str | None = None,
) -> dict:
    from tasks.training.train import train_lora_adapter  # torch loads here, not when the module is imported

    t0 = started()
    settings = settings_for(train=dict(
        base_model=base_model, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, batch_size=batch_size,
        micro_batch_size=micro_batch_size, epochs=epochs, learning_rate=learning_rate, cutoff_len=cutoff_len, seed=seed,
        model_kind=model_kind, nproc=nproc, parallelism=parallelism,
        target_modules=tuple(target_modules) if target_modules else None, train_on_inputs=train_on_inputs,
        encoder_lora_layers=encoder_lora_layers, precision=precision,
    ))
    cfg = settings.train
    ws = workspace(settings)
    ds_version = ws.dataset_version(settings.dataset.name, dataset)
    manifest = ds_version.manifest
    train_records, val_records = ds_version.read_records("train"), ds_version.read_records("validation")
    prompter = Prompter.load()
    corpus = [prompter.prompt(r["instruction"], r["input"]) + r["output"] for r in train_records] + list(prompter.labels)
    encoder = cfg.model_kind == "encoder"
    base, built_here = (cfg.base_model, False) if encoder else resolve_base_model(cfg, ws.model_dir, corpus)
    tracker = MlflowTracker.from_settings(settings, ws.mlflow_artifacts_dir())
    tags = {
        "model_kind": "lora", "task": manifest.task, "dataset_fingerprint": manifest.fingerprint,
        "chain_data": manifest.chain_label, "base_model": cfg.base_model,
        "model_type": cfg.model_kind, "git_commit": git_commit(),
        "base_model_logged": str(built_here).lower(),
        "base_model_sha256": base_model_sha256(base, ws.model_hash_cache(), cfg.model_kind),
    }
    with tracker.run(run_name=run_name(cfg, cfg.base_model, manifest.fingerprint), tags=tags,
                     system_metrics_s=settings.tracking.system_metrics_s) as run_id:
        tracker.log_params({**settings.flat_params(), "dataset.fingerprint": manifest.fingerprint,
                            "base_model.sha256": tags["base_model_sha256"],
                            "dataset.rows_train": manifest.rows["train"], "dataset.rows_validation": manifest.rows["validation"],
                            "dataset.thresholds": manifest.thresholds})
        tracker.log_dataset(ds_version.features_path, manifest.to_dict())
        tracker.log_dict(settings.public_dict(), "settings.json")
        tracker.log_dict(manifest.to_dict(), "dataset_manifest.json")
        log_step = lambda m, step: tracker.log_metrics(m, step, run_id=run_id)  # noqa: E731
        if encoder:
            from tasks.training.encoder import train_encoder_adapter

            train = task(train_encoder_adapter, name="train-encoder-adapter", cache_policy=NO_CACHE)
            result = train(cfg, train_records, val_records, ws.run_dir(run_id) / "adapter", manifest.kind, log_step)
        elif cfg.nproc > 1:
            from tasks.training.launch import launch_training

            train = task(launch_training, name="train-lora-torchrun", cache_policy=NO_CACHE)
            result = train(cfg, base, train_records, val_records, ws.run_dir(run_id) / "adapter", nproc=cfg.nproc,
                           work_dir=ws.run_dir(run_id) / "launch", mlflow={"tracking_uri": settings.tracking_uri, "run_id": run_id},
                           checkpoint_dir=ws.model_dir(f"checkpoints-{manifest.fingerprint}"))
        else:
            train = task(train_lora_adapter, name="train-lora-adapter", cache_policy=NO_CACHE)
            result = train(cfg, base, train_records, val_records, ws.run_dir(run_id) / "adapter", log_step,
                           checkpoint_dir=ws.model_dir(f"checkpoints-{manifest.fingerprint}"))  # resumed only if settings match
        tracker.log_metrics({"trainable_params": result.trainable_params, "trainable_share": result.trainable_share,
                             "peak_memory_mb": result.peak_memory_mb, "train_tokens_per_s": result.tokens_per_s,
                             "train_seconds": result.seconds, "train_processes": result.world_size})
        tracker.log_artifacts(ws.run_dir(run_id) / "adapter", "adapter")
        if built_here:
            tracker.log_artifacts(Path(base), "base_model")
        version = tracker.register_adapter(run_id, "adapter", {"dataset_fingerprint": manifest.fingerprint})
        tracker.set_tags({"registered_version": version})
    summary = {"flow": "train-lora", "run_id": run_id, "registered_model": settings.tracking.registered_model,
               "version": version, "steps": result.steps, "train_loss_last": round(result.train_loss_last, 4),
               "val_loss": round(result.val_loss, 4) if result.val_loss is not None else None,
               "tokens_per_s": round(result.tokens_per_s), "device": result.device,
               "selected_step": result.selected_step, "selection_score": result.selection_score,
               "processes": result.world_size,
               "dataset": manifest.fingerprint, "seconds": round(started() - t0, 2)}
    if run_evaluation:
        evaluation = evaluate(run_id=run_id)
        summary.update({k: evaluation[k] for k in ("verdict", "test_macro_f1", "test_mcc", "validation_macro_f1",
                                                    "champion_promoted", "mlflow_run", "compare", "experiment_id",
                                                    "compared_runs") if k in evaluation})
        summary["evaluation"] = evaluation
    publish_summary(summary, "train-lora summary")  # the flow run's artifact: verdict, key numbers, links
    return summary
