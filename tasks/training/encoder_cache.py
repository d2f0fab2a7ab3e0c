"""The encoder kind's fast path for LoRA on the top layers only (``train.encoder_lora_layers``): the embeddings and the
layers below do not change while training, so :class:`FrozenPrefix` runs them once per text and replays their outputs;
and how a batch of texts becomes the model's inputs (:func:`encode`), under bfloat16 autocast or not (:func:`autocast`).
Used by tasks/training/encoder.py; no prefect/mlflow here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from tasks.core.logs import get_logger


def encode(tokenizer, texts: Sequence[str], max_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One batch of texts as the model's inputs: truncated to ``max_len`` tokens, right-padded, on ``device``."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def autocast(device: torch.device, bf16: bool):
    """The encoder's matmuls in bfloat16 (``train.precision = "bf16"``); its weights, LoRA's and the loss stay fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


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

    def __init__(self, model, n_frozen: int, tokenizer, max_len: int, device: torch.device, bf16: bool = False):
        self.body, self.n_frozen = _bert_body(model), n_frozen
        self.tokenizer, self.max_len, self.device, self.bf16 = tokenizer, max_len, device, bf16
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
        # under bf16 autocast too the layers pass fp32 states on (LayerNorm's output): kept as they are, the replay
        # computes what the whole model does, so the saved adapter reloaded scores as the cached evaluation selected it
        with self._swapped(0, self.n_frozen, self.body.embeddings), autocast(self.device, self.bf16):
            for i in range(0, len(new), 32):
                enc = encode(self.tokenizer, new[i:i + 32], self.max_len, self.device)
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
