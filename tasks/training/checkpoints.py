"""What a LoRA run writes: resumable checkpoints every ``train.checkpoint_every_steps`` (LoRA weights,
optimizer, scheduler, every rank's RNG, the example order) that a rerun with the same settings and data
resumes from, and at the end the adapter with its tokenizer and ``chainsignal_train.json``.

Under FSDP the weights and the optimizer state are gathered from the shards: every rank calls the
functions here, rank 0 alone writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tasks.core.settings import TrainSettings
from tasks.training.distributed import Processes

CHECKPOINT_FILE = "checkpoint.pt"
TRAIN_RECORD = "chainsignal_train.json"  # beside the adapter: what the run was, and what its scorer must apply


def write_train_record(out_dir: Path, record: dict[str, Any]) -> None:
    """``chainsignal_train.json`` into an adapter's folder (both kinds write it; their scorers read it back)."""
    (out_dir / TRAIN_RECORD).write_text(json.dumps(record, indent=2))


def read_train_record(adapter_dir: Path) -> dict[str, Any]:
    """An adapter's ``chainsignal_train.json``; {} for an adapter saved without one."""
    path = Path(adapter_dir) / TRAIN_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def run_key(cfg: TrainSettings, base_model: str, examples: Sequence[dict[str, list[int]]], world: int) -> str:
    """What a checkpoint must match to be resumed: every setting, the base model, the data, the world size."""
    knobs = {k: v for k, v in cfg.model_dump().items() if k not in ("log_every_steps", "checkpoint_every_steps")}
    blob = json.dumps([knobs, base_model, world, [e["input_ids"] for e in examples], [e["labels"] for e in examples]],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_checkpoint(ckpt_dir: Path, state: dict[str, Any]) -> Path:
    """Write the resumable state atomically (temporary name, then rename)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp, final = ckpt_dir / (CHECKPOINT_FILE + ".tmp"), ckpt_dir / CHECKPOINT_FILE
    torch.save(state, tmp)
    tmp.replace(final)
    return final


def load_checkpoint(ckpt_dir: Path | None, key: str) -> dict[str, Any] | None:
    if ckpt_dir is None or not (ckpt_dir / CHECKPOINT_FILE).is_file():
        return None
    state = torch.load(ckpt_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    return state if state.get("run_key") == key else None


def write_checkpoint(ckpt_dir: Path, progress: dict[str, Any], peft_model, optimizer, scheduler, procs: Processes) -> None:
    """Checkpoint the run: ``progress`` (run key, step, tokens seen, example order) plus the trainable state.

    Collective under FSDP (shards gathered) and for the per-rank RNG states: every rank takes part.
    """
    lora = lora_state(peft_model, procs.fsdp, procs.rank)
    optim = full_optimizer_state(peft_model, optimizer) if procs.fsdp else optimizer.state_dict()
    rngs = gather_rng_states(procs.device, procs.world)
    if procs.is_main:
        save_checkpoint(ckpt_dir, {**progress, "torch_rng": torch.get_rng_state(), "rng_ranks": rngs, "optimizer": optim,
                                   "scheduler": scheduler.state_dict(), "lora": lora})


def restore_checkpoint(state: dict[str, Any], peft_model, optimizer, scheduler, procs: Processes) -> None:
    """Put a checkpoint's LoRA weights, optimizer, scheduler and this rank's RNG back in place."""
    if procs.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        full = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(peft_model, state["lora"], options=full)
        set_optimizer_state_dict(peft_model, optimizer, state["optimizer"], options=full)
    else:
        named = dict(peft_model.named_parameters())
        with torch.no_grad():
            for name, value in state["lora"].items():
                named[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ranks_rng = state.get("rng_ranks")
    if ranks_rng and len(ranks_rng) == procs.world:
        torch.set_rng_state(ranks_rng[procs.rank]["cpu"])
        if "cuda" in ranks_rng[procs.rank] and procs.device.type == "cuda":
            torch.cuda.set_rng_state(ranks_rng[procs.rank]["cuda"], procs.device)
    else:
        torch.set_rng_state(state["torch_rng"])


def save_adapter(out_dir: Path, peft_model, tokenizer, summary: dict[str, Any], procs: Processes,
                 checkpoint_dir: Path | None) -> None:
    """Adapter + tokenizer + ``chainsignal_train.json`` (``summary``) into ``out_dir`` on rank 0; the
    finished run's checkpoint is removed. Every rank calls this (FSDP gathers the adapter on rank 0)."""
    adapter_state = lora_state(peft_model, procs.fsdp, procs.rank) if procs.fsdp else None
    if not procs.is_main:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir, state_dict=adapter_state)
    tokenizer.save_pretrained(out_dir)
    write_train_record(out_dir, summary)
    if checkpoint_dir is not None and (checkpoint_dir / CHECKPOINT_FILE).is_file():
        (checkpoint_dir / CHECKPOINT_FILE).unlink()  # finished: the next run starts fresh


def lora_state(model, fsdp: bool, rank: int) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) weights by parameter name, on CPU. Under FSDP every rank must call this
    (the shards are gathered) and only rank 0 gets them; otherwise it is a local copy."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                    ignore_frozen_params=True))
    if rank != 0:
        return {}
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def full_optimizer_state(model, optimizer) -> dict[str, Any]:
    """FSDP: the optimizer state gathered to full tensors on rank 0 (keyed by parameter name)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def rng_states(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng_states(device: torch.device, world: int) -> list[dict[str, Any]]:
    """Every rank's RNG state (dropout draws differ per rank), in rank order."""
    mine = rng_states(device)
    if world == 1:
        return [mine]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, mine)
    return out
