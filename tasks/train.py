"""LoRA fine-tuning of a causal LM on the Alpaca records (the alpaca-lora recipe, time-split).

This is the training core: it imports torch/transformers/peft but neither prefect nor mlflow,
so it runs the same inside a Prefect flow and on a bare GPU box. Metrics leave through a
callback (``log_metrics``); the flow wires that callback to MLflow.

Reference path: right-padded micro-batches (padded to the longest in the batch), loss on the
response tokens only unless ``train_on_inputs``, gradient accumulation up to ``batch_size``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.logs import get_logger
from tasks.prompter import Prompter

IGNORE_INDEX = -100
MetricsFn = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: str
    steps: int
    epochs: float
    examples: int
    train_loss_last: float
    val_loss: float | None
    tokens_seen: int
    tokens_per_s: float
    trainable_params: int
    total_params: int
    trainable_share: float
    peak_memory_mb: float
    seconds: float
    device: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_device(setting: str = "auto") -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_base_model(name_or_path: str, device: torch.device, dtype: torch.dtype | None = None):
    """Tokenizer and causal LM from a local path or a hub id (cached copy when HF_HUB_OFFLINE=1)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:  # Llama tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or pick_dtype(device))
    model.to(device)
    return tokenizer, model


def encode_pair(tokenizer, prompt: str, response: str, cutoff_len: int, add_eos: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of prompt and response, tokenized separately (training and scoring share this).

    When too long, the prompt is cut from the left of its input so the response always fits.
    """
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        r_ids = r_ids + [tokenizer.eos_token_id]
    room = cutoff_len - len(r_ids)
    if room < 1:
        raise ValueError(f"cutoff_len {cutoff_len} leaves no room for a prompt")
    if len(p_ids) > room:
        p_ids = p_ids[len(p_ids) - room:]
    return p_ids, r_ids


def tokenize_records(tokenizer, prompter: Prompter, records: Sequence[dict[str, Any]], cutoff_len: int,
                     train_on_inputs: bool) -> list[dict[str, list[int]]]:
    out = []
    for r in records:
        p_ids, r_ids = encode_pair(tokenizer, prompter.prompt(r["instruction"], r["input"]), prompter.response(r["output"]), cutoff_len)
        labels = (p_ids if train_on_inputs else [IGNORE_INDEX] * len(p_ids)) + r_ids
        out.append({"input_ids": p_ids + r_ids, "labels": labels})
    return out


def collate(batch: Sequence[dict[str, list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence in the batch (the reference path)."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


@torch.no_grad()
def evaluate_loss(model, examples: Sequence[dict[str, list[int]]], pad_id: int, micro_batch_size: int, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), micro_batch_size):
        batch = collate(examples[i:i + micro_batch_size], pad_id, device)
        out = model(**batch)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(out.loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def train_lora_adapter(
    cfg: Any,
    base_model: str,
    train_records: Sequence[dict[str, Any]],
    val_records: Sequence[dict[str, Any]],
    out_dir: Path,
    log_metrics: MetricsFn | None = None,
) -> TrainResult:
    """Fine-tune LoRA adapters on ``train_records``; save adapter + tokenizer to ``out_dir``.

    ``cfg`` is a :class:`tasks.settings.TrainSettings` (or anything with the same fields).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    log = get_logger()
    log_metrics = log_metrics or (lambda metrics, step: None)
    t_start = time.perf_counter()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    tokenizer, model = load_base_model(base_model, device)
    if getattr(cfg, "gradient_checkpointing", False):
        model.gradient_checkpointing_enable()
    model = get_peft_model(model, LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
    ))
    trainable, total = count_params(model)
    prompter = Prompter.load()
    train_ex = tokenize_records(tokenizer, prompter, train_records, cfg.cutoff_len, cfg.train_on_inputs)
    val_ex = tokenize_records(tokenizer, prompter, val_records, cfg.cutoff_len, cfg.train_on_inputs)
    accum = cfg.batch_size // cfg.micro_batch_size
    steps_per_epoch = max(1, math.ceil(len(train_ex) / cfg.batch_size))
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(cfg.warmup_steps, total_steps - 1), total_steps)
    mean_len = sum(len(e["input_ids"]) for e in train_ex) / max(1, len(train_ex))
    log.info(
        "train: %d examples (%.0f tokens each on average), %d steps of %d (micro %d x accum %d), device %s, "
        "trainable %d / %d params (%.3f%%)", len(train_ex), mean_len, total_steps, cfg.batch_size,
        cfg.micro_batch_size, accum, device, trainable, total, 100 * trainable / total,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    gen = random.Random(cfg.seed)
    order: list[int] = []
    step, tokens_seen, last_loss = 0, 0, float("nan")
    t_train = time.perf_counter()
    while step < total_steps:
        t_step = time.perf_counter()
        step_tokens, step_loss = 0, 0.0
        for _ in range(accum):
            if len(order) < cfg.micro_batch_size:
                fresh = list(range(len(train_ex)))
                gen.shuffle(fresh)
                order += fresh
            idx, order = order[:cfg.micro_batch_size], order[cfg.micro_batch_size:]
            batch = collate([train_ex[i] for i in idx], tokenizer.pad_token_id, device)
            loss = model(**batch).loss / accum
            loss.backward()
            step_loss += loss.item()
            step_tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += step_tokens
        last_loss = step_loss
        dt = time.perf_counter() - t_step
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"train loss became {last_loss} at step {step}; lower train.learning_rate")
        if step % cfg.log_every_steps == 0 or step == total_steps:
            metrics = {"train_loss": last_loss, "learning_rate": scheduler.get_last_lr()[0],
                       "tokens_per_s": step_tokens / dt, "step_time_s": dt}
            log_metrics(metrics, step)
            log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s %.2fs", step, total_steps, last_loss,
                     metrics["learning_rate"], metrics["tokens_per_s"], dt)
    train_seconds = time.perf_counter() - t_train
    val_loss = evaluate_loss(model, val_ex, tokenizer.pad_token_id, cfg.micro_batch_size, device) if val_ex else None
    if val_loss is not None:
        log_metrics({"val_loss": val_loss}, step)
        log.info("validation loss %.4f", val_loss)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    result = TrainResult(
        adapter_dir=str(out_dir), steps=step, epochs=step / steps_per_epoch, examples=len(train_ex),
        train_loss_last=last_loss, val_loss=val_loss, tokens_seen=tokens_seen,
        tokens_per_s=tokens_seen / max(train_seconds, 1e-9), trainable_params=trainable, total_params=total,
        trainable_share=trainable / total, peak_memory_mb=peak, seconds=time.perf_counter() - t_start,
        device=str(device),
    )
    (out_dir / "chainsignal_train.json").write_text(json.dumps({"base_model": base_model, **result.as_dict()}, indent=2))
    return result


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
