"""LoRA fine-tuning of a causal LM on the Alpaca records (the alpaca-lora recipe, time-split).

This is the training core: it imports torch/transformers/peft but neither prefect nor mlflow,
so it runs the same inside a Prefect flow and on a bare GPU box. Metrics leave through a
callback (``log_metrics``); the flow wires that callback to MLflow.

Reference path: right-padded micro-batches (padded to the longest in the batch), loss on the
response tokens only unless ``train_on_inputs``, gradient accumulation up to ``batch_size``.

The recipe: :func:`train_lora_adapter` runs small setup steps (processes, model, data, optimizer,
resume) and then one loop that reads top to bottom. The parts live beside it: model.py (loading,
QLoRA, fp8, compile, the LoRA wrap), data.py (tokens, micro-batches, the step plan),
distributed.py (process group, DDP/FSDP), checkpoints.py (resumable state, the saved adapter).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.core.logs import get_logger
from tasks.core.progress import progress
from tasks.core.settings import TrainSettings
from tasks.dataset.prompter import Prompter
from tasks.training.checkpoints import load_checkpoint, restore_checkpoint, run_key, save_adapter, write_checkpoint
from tasks.training.data import (
    Example,
    MicroBatches,
    StepPlan,
    collate,
    evaluate_loss,
    label_loglik,
    plan_steps,
    tokenize_records,
)
from tasks.training.distributed import (
    Processes,
    barrier,
    gradient_sync,
    join_processes,
    lora_digest,
    over_processes,
    wrap_for_processes,
)
from tasks.training.fastpath.attention import sdpa_without_cudnn
from tasks.training.fastpath.packing import collate_packed, packed_loss
from tasks.training.model import (
    compile_decoder_layers,
    count_params,
    load_base_model,
    load_base_model_for_fsdp,
    peak_memory_mb,
    pick_train_dtype,
    prepare_for_training,
    use_fp8_base,
    wrap_lora,
)
from tasks.training.selection import (
    Selection,
    class_weights,
    corrected,
    is_class_task,
    macro_f1,
    predicted_labels,
    prior_adjustment,
)

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
    world_size: int = 1  # processes that trained together (torchrun / accelerate)
    parallelism: str = "single"  # single, ddp or fsdp
    lora_digest: str | None = None  # sha256 of this process's LoRA weights (DDP replicas must agree); None under FSDP
    selected_step: int | None = None  # the step whose weights were saved (best validation evaluation); None = the last
    selection_metric: str = "last"  # val_macro_f1, -val_loss, or last
    selection_score: float | None = None  # the saved weights' validation score
    evaluations: int = 0  # validation evaluations during training
    label_adjustment: list[float] | None = None  # causal kind: per-label prior correction the scorer applies (selection.py)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Model:
    tokenizer: Any
    model: Any  # what the forward pass calls: the peft model, or its DDP wrapper
    peft: Any  # the peft model itself (FSDP shards it in place): its parameters are trained, checkpointed, saved
    dtype: torch.dtype
    trainable: int
    total: int


@sdpa_without_cudnn
def train_lora_adapter(
    cfg: TrainSettings,
    base_model: str,
    train_records: Sequence[dict[str, Any]],
    val_records: Sequence[dict[str, Any]],
    out_dir: Path,
    log_metrics: MetricsFn | None = None,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Fine-tune LoRA adapters on ``train_records``; save adapter + tokenizer to ``out_dir``.

    Fast path: ``cfg.packing`` (one packed row per micro-batch, document-masked; with
    ``cfg.pack_tokens`` rows of up to that many tokens, best-fit packed each epoch),
    ``cfg.attention``, ``cfg.compile``. With ``checkpoint_dir`` and ``cfg.checkpoint_every_steps``
    the run saves its state every N steps and a rerun with the same settings and data resumes
    from the last checkpoint (the checkpoint is removed once the adapter is saved).

    Under torchrun (``cfg.distributed``) every process runs this function: ``cfg.parallelism``
    "ddp" keeps a replica per process, "fsdp" shards base and LoRA weights over the processes
    (FSDP2, per decoder layer). Each process trains on its own slice of every step's examples;
    the logged loss and tokens/s are over all processes; only rank 0 logs, checkpoints and saves.
    """
    # ------------------------------------------------------------------ setup
    log = get_logger()
    log_metrics = log_metrics or (lambda metrics, step: None)
    t_start = time.perf_counter()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    procs = join_processes(cfg)
    m = _setup_model(cfg, base_model, procs)
    train_ex, val_ex, plan = _setup_data(cfg, m.tokenizer, train_records, val_records, procs.world)
    params, optimizer, scheduler = _setup_optimizer(cfg, m.peft, plan, procs)
    selection = _selection(cfg, m, train_records, val_records, val_ex, plan, procs)
    _log_plan(cfg, m, train_ex, plan, procs, selection)
    batches = MicroBatches(train_ex, plan, cfg.micro_batch_size, cfg.seed, weights=_example_weights(cfg, train_records))
    key = run_key(cfg, base_model, train_ex, procs.world)
    every = cfg.checkpoint_every_steps
    # ------------------------------------------------------------------ resume (same settings, data and world only)
    step, tokens_seen, last_loss = 0, 0, float("nan")
    state = load_checkpoint(checkpoint_dir, key) if every else None
    if state is not None:
        restore_checkpoint(state, m.peft, optimizer, scheduler, procs)
        batches.restore(state)
        selection.load_state(state.get("selection"))
        step, tokens_seen = state["step"], state["tokens_seen"]
        if procs.is_main:
            log.info("resumed from checkpoint at step %d/%d (%s)", step, plan.total_steps, checkpoint_dir)
    # ------------------------------------------------------------------ the loop: one optimizer step per turn
    if procs.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(procs.device)
    # Mixed precision as the HF Trainer does it: the LoRA weights stay fp32 (peft's default) and
    # their matmuls run in the base model's half precision. Without it they ran as fp32 SIMT GEMMs
    # on fp32 copies of the activations: 8% of the GPU time in the 7B benchmark (bench/results/train_gpu.md).
    half = m.dtype in (torch.bfloat16, torch.float16)
    autocast = torch.autocast(procs.device.type, dtype=m.dtype) if half and procs.device.type == "cuda" else nullcontext()
    pad_to = plan.pack_tokens if plan.pack_tokens and cfg.compile else None  # fixed shapes: no recompiles
    m.model.train()
    bar = progress(plan.total_steps, "train-lora", "step", initial=step, disable=None if procs.is_main else True)
    t_train = time.perf_counter()
    steps_this_run = 0
    while step < plan.total_steps:
        t_step = time.perf_counter()
        step_tokens, step_loss = 0, 0.0
        for micro in range(plan.accum):
            mine = batches.next(procs.rank)
            sync = procs.world == 1 or micro == plan.accum - 1
            with gradient_sync(m.model, m.peft, procs, sync):
                with autocast:
                    loss, n_tokens = _micro_batch_loss(cfg, m, mine, procs.device, pad_to)
                (loss / plan.accum).backward()
            step_tokens += n_tokens
            step_loss += loss.detach() / plan.accum  # stays on the device: one host sync per optimizer step, not per micro-batch
        step_loss, step_tokens = over_processes(float(step_loss), step_tokens, procs)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_this_run += 1
        tokens_seen += step_tokens
        last_loss = step_loss
        dt = time.perf_counter() - t_step
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"train loss became {last_loss} at step {step}; lower train.learning_rate")
        stop = selection.due(step) and selection.update(step, m.peft, m.model)  # before the checkpoint: resumes select alike
        if every and checkpoint_dir is not None and step % every == 0 and step < plan.total_steps:
            progress_state = {"run_key": key, "step": step, "tokens_seen": tokens_seen, **batches.state(),
                              "selection": selection.state()}
            write_checkpoint(checkpoint_dir, progress_state, m.peft, optimizer, scheduler, procs)
        bar.set_postfix_str(f"loss {last_loss:.4f}, {step_tokens / dt:,.0f} tok/s", refresh=False)
        bar.update(1)
        if procs.is_main and (step % cfg.log_every_steps == 0 or step == plan.total_steps):
            metrics = {"train_loss": last_loss, "learning_rate": scheduler.get_last_lr()[0],
                       "tokens_per_s": step_tokens / dt, "step_time_s": dt}
            log_metrics(metrics, step)
            log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s %.2fs", step, plan.total_steps, last_loss,
                     metrics["learning_rate"], metrics["tokens_per_s"], dt)
        if procs.is_main and selection.logged(step):
            log_metrics(selection.logged(step), step)
        if stop:
            break
    bar.close()
    selection.restore(m.peft)
    # ------------------------------------------------------------------ validation, result, adapter
    train_seconds = time.perf_counter() - t_train
    val_loss = _validate(cfg, m, val_ex, procs, step, log_metrics)
    result = TrainResult(
        adapter_dir=str(out_dir), steps=step, epochs=step / plan.steps_per_epoch, examples=len(train_ex),
        train_loss_last=last_loss, val_loss=val_loss, tokens_seen=tokens_seen,
        tokens_per_s=tokens_seen / max(train_seconds, 1e-9) if steps_this_run else 0.0, trainable_params=m.trainable,
        total_params=m.total, trainable_share=m.trainable / m.total, peak_memory_mb=peak_memory_mb(procs.device),
        seconds=time.perf_counter() - t_start, device=str(procs.device), world_size=procs.world,
        parallelism=procs.mode, lora_digest=None if procs.fsdp else lora_digest(m.peft), **selection.summary(),
    )
    save_adapter(out_dir, m.peft, m.tokenizer, {"base_model": base_model, **result.as_dict()}, procs, checkpoint_dir)
    barrier(procs)
    return result


def _setup_model(cfg: TrainSettings, base_model: str, procs: Processes) -> _Model:
    """Base model loaded (4-bit with QLoRA, rank 0 only under FSDP), LoRA-wrapped, fp8 / compiled
    as the settings ask, then sharded (FSDP) or wrapped (DDP) for the processes."""
    dtype = pick_train_dtype(cfg.precision, procs.device)
    if procs.fsdp and cfg.qlora:
        raise ValueError("train.qlora cannot be combined with train.parallelism='fsdp'; use ddp")
    if procs.fsdp:
        tokenizer, model = load_base_model_for_fsdp(base_model, procs.rank, dtype, attention=cfg.attention)
    else:
        tokenizer, model = load_base_model(base_model, procs.device, dtype, attention=cfg.attention, qlora=cfg.qlora)
    model = wrap_lora(prepare_for_training(model, cfg), cfg)
    trainable, total = count_params(model)
    if cfg.fp8_base:
        use_fp8_base(model, cfg, procs.device)
    if cfg.compile:
        compile_decoder_layers(model)
    return _Model(tokenizer=tokenizer, model=wrap_for_processes(model, procs), peft=model, dtype=dtype,
                  trainable=trainable, total=total)


def _setup_data(cfg: TrainSettings, tokenizer, train_records: Sequence[dict[str, Any]],
                val_records: Sequence[dict[str, Any]], world: int) -> tuple[list[Example], list[Example], StepPlan]:
    """Both splits as token ids (the prompter's templates) and how the training split becomes steps."""
    prompter = Prompter.load()
    train_ex = tokenize_records(tokenizer, prompter, train_records, cfg.cutoff_len, cfg.train_on_inputs)
    val_ex = tokenize_records(tokenizer, prompter, val_records, cfg.cutoff_len, cfg.train_on_inputs)
    return train_ex, val_ex, plan_steps(cfg, train_ex, world)


def _setup_optimizer(cfg: TrainSettings, peft_model, plan: StepPlan, procs: Processes):
    """(trainable parameters, AdamW, linear warmup-then-decay schedule)."""
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in peft_model.parameters() if p.requires_grad]  # after sharding: FSDP swaps in DTensor shards
    # fused on CUDA (one kernel for all LoRA weights); FSDP's DTensor shards keep the default
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0,
                                  fused=procs.device.type == "cuda" and not procs.fsdp)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(cfg.warmup_steps, plan.total_steps - 1), plan.total_steps)
    return params, optimizer, scheduler


def _log_plan(cfg: TrainSettings, m: _Model, train_ex: Sequence[Example], plan: StepPlan, procs: Processes,
              selection: Selection) -> None:
    if not procs.is_main:
        return
    mean_len = sum(len(e["input_ids"]) for e in train_ex) / max(1, len(train_ex))
    get_logger().info(
        "train: %d examples (%.0f tokens each on average), up to %d steps of %d (micro %s x accum %d x %d processes, %s), "
        "device %s %s, attention %s, packing %s, compile %s, lr %.1e, class balance %s, selection %s, "
        "trainable %d / %d params (%.3f%%)", len(train_ex),
        mean_len, plan.total_steps, cfg.batch_size,
        f"{plan.pack_tokens}-token rows" if plan.pack_tokens else cfg.micro_batch_size, plan.accum, procs.world,
        procs.mode, procs.device, m.dtype, cfg.attention, cfg.packing, cfg.compile, cfg.learning_rate, cfg.class_balance,
        selection.metric if selection.active else "last step", m.trainable, m.total, 100 * m.trainable / m.total,
    )


def _example_weights(cfg: TrainSettings, records: Sequence[dict[str, Any]]) -> list[float] | None:
    """Each training example's draw weight under ``class_balance = "balanced"`` (class tasks only)."""
    if cfg.class_balance == "none" or not is_class_task(records):
        return None
    w = class_weights([r["output"] for r in records])
    return [w[r["output"]] for r in records]


def _selection(cfg: TrainSettings, m: _Model, train_records: Sequence[dict[str, Any]], val_records: Sequence[dict[str, Any]],
               val_ex: Sequence[Example], plan: StepPlan, procs: Processes) -> Selection:
    """Validation macro-F1 by label likelihood (class tasks) or minus the validation loss (number tasks). One
    process only: several processes keep the last step (their validation would need every rank to take part)."""
    if is_class_task(val_records):
        prompter = Prompter.load()
        sample = random.Random(cfg.seed).sample(list(train_records), min(len(train_records), 256))

        def score() -> tuple[float, dict[str, Any]]:
            adjustment = None
            if cfg.label_prior_correction:  # the shares the model gives training inputs, moved to the training labels'
                ref = label_loglik(m.peft, m.tokenizer, prompter, sample, cfg.cutoff_len, cfg.micro_batch_size)
                adjustment = prior_adjustment(ref, [r["output"] for r in sample])
            loglik = label_loglik(m.peft, m.tokenizer, prompter, val_records, cfg.cutoff_len, cfg.micro_batch_size)
            value = macro_f1([r["output"] for r in val_records], predicted_labels(corrected(loglik, adjustment)))
            return value, {"label_adjustment": adjustment}
        metric = "val_macro_f1"
    else:
        def score() -> float:
            return -evaluate_loss(m.peft, val_ex, m.tokenizer.pad_token_id, cfg.micro_batch_size, procs.device)
        metric = "-val_loss"
    if not val_records or procs.world > 1:
        if procs.world > 1 and cfg.select_by != "last" and procs.is_main:
            get_logger().info("select_by %s applies to one process; %d processes keep the last step", cfg.select_by, procs.world)
        cfg = cfg.model_copy(update={"select_by": "last"})
    return Selection(cfg, plan.steps_per_epoch, plan.total_steps, score, metric)


def _micro_batch_loss(cfg: TrainSettings, m: _Model, examples: list[Example], device: torch.device,
                      pad_to: int | None) -> tuple[torch.Tensor, int]:
    """One micro-batch's loss and its real tokens (a packed row's padding does not count)."""
    if cfg.packing:
        batch = collate_packed(examples, device, pad_to=pad_to, block_mask=cfg.attention == "flex_attention")
        loss, _ = packed_loss(m.model, batch)
        return loss, sum(len(e["input_ids"]) for e in examples)
    batch = collate(examples, m.tokenizer.pad_token_id, device)
    return m.model(**batch, use_cache=False).loss, int(batch["attention_mask"].sum())


def _validate(cfg: TrainSettings, m: _Model, val_ex: Sequence[Example], procs: Processes, step: int,
              log_metrics: MetricsFn) -> float | None:
    """Validation loss on rank 0 (None elsewhere); a sharded model runs forward with every rank taking part."""
    if not val_ex or not (procs.is_main or procs.fsdp):
        return None
    val_loss = evaluate_loss(m.peft, val_ex, m.tokenizer.pad_token_id, cfg.micro_batch_size, procs.device)
    if not procs.is_main:
        return None
    log_metrics({"val_loss": val_loss}, step)
    get_logger().info("validation loss %.4f", val_loss)
    return val_loss
