"""Scoring a trained adapter: what the LoRA model predicts for a split's records.

A causal model is never asked to write free text for a class: each candidate label is scored by the
log-likelihood of its tokens given the prompt (built by the same prompter as in training), and the
best one wins; each prompt runs once, its KV cache shared by the labels (``label_loglik``, which
training's per-epoch selection scores with too). Number tasks are answered greedily and parsed
strictly. Encoder adapters answer with their head. torch, transformers and peft load when a scorer is
built, not when this module is imported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.labelset import LABELS
from tasks.core.logs import quiet_peft_wrap
from tasks.dataset.prompter import Prompter


def label_loglik(model, tokenizer, prompter, records: Sequence[dict[str, Any]], cutoff_len: int,
                 batch_size: int = 8) -> np.ndarray:
    """(n_records, n_labels) log-likelihoods of each label given its prompt: :func:`tasks.training.data.label_loglik`,
    the one training's validation selection uses, imported here when called (torch loads then, not on import)."""
    from tasks.training.data import label_loglik as score_labels

    return score_labels(model, tokenizer, prompter, records, cutoff_len, batch_size)


def predict_labels(loglik: np.ndarray, labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Best label per row and the class probabilities (softmax over the label log-likelihoods)."""
    z = loglik - loglik.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return [labels[i] for i in loglik.argmax(axis=1)], probs


# ----------------------------------------------------------------------------- numbers
NUMBER_PATTERN = r"^\s*([+-]?\d+(?:\.\d+)?)\s*$"


def parse_number(text: str) -> float | None:
    """Strict: the whole answer must be one number; anything else is an error (None)."""
    m = re.match(NUMBER_PATTERN, text.split("\n", 1)[0])
    return float(m.group(1)) if m else None


def generate_answers(model, tokenizer, prompter, records: Sequence[dict[str, Any]], cutoff_len: int,
                     max_new_tokens: int = 10) -> list[str]:
    """Greedy answers, one prompt at a time (no padding effects), decoded up to EOS."""
    import torch

    from tasks.training.data import encode_pair

    device = next(model.parameters()).device
    out = []
    model.eval()
    with torch.no_grad():
        for r in records:
            p_ids, _ = encode_pair(tokenizer, prompter.prompt(r["instruction"], r["input"]), "",
                                   max(2, cutoff_len - max_new_tokens), add_eos=False)
            ids = torch.tensor([p_ids], device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return out


# ----------------------------------------------------------------------------- the scorers
class CausalScorer:
    """A causal LoRA model: classes by label likelihood, numbers generated and parsed strictly."""

    def __init__(self, adapter_dir: Path, base_model: str, cutoff_len: int, device: str = "auto"):
        from peft import PeftModel

        from tasks.training.checkpoints import read_train_record
        from tasks.training.model import load_base_model, pick_device

        dev = pick_device(device)
        self.tokenizer, base = load_base_model(base_model, dev)
        with quiet_peft_wrap():
            self.model = PeftModel.from_pretrained(base, str(adapter_dir)).to(dev)
        self.prompter = Prompter.load()
        self.cutoff_len = cutoff_len
        self.adjustment = read_train_record(adapter_dir).get("label_adjustment")

    def labels(self, records: Sequence[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
        """Label and class probabilities by label likelihood, with the run's prior correction when it has one."""
        from tasks.training.selection import corrected

        loglik = label_loglik(self.model, self.tokenizer, self.prompter, records, self.cutoff_len)
        return predict_labels(corrected(loglik, self.adjustment), self.prompter.labels)

    def answers(self, records: Sequence[dict[str, Any]]) -> list[str]:
        return generate_answers(self.model, self.tokenizer, self.prompter, records, self.cutoff_len)


class EncoderScorer:
    """An encoder LoRA model: its head's outputs (class probabilities, or the regressed number)."""

    def __init__(self, adapter_dir: Path, base_model: str, cutoff_len: int, kind: str, device: str = "auto"):
        from tasks.training.encoder import EncoderPredictor

        self.predictor = EncoderPredictor(adapter_dir, base_model, kind, device, max_len=cutoff_len)

    def labels(self, records: Sequence[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
        return predict_labels(self.predictor.outputs([r["input"] for r in records]), LABELS)

    def answers(self, records: Sequence[dict[str, Any]]) -> list[str]:
        return [f"{x:.4f}" for x in self.predictor.predict_numbers([r["input"] for r in records])]


def load_scorer(adapter_dir: Path, base_model: str, cutoff_len: int, *, model_type: str, kind: str,
                device: str = "auto") -> CausalScorer | EncoderScorer:
    """The scorer for a trained adapter of ``model_type`` (causal or encoder) on a ``kind`` (class or number) task."""
    if model_type == "encoder":
        return EncoderScorer(adapter_dir, base_model, cutoff_len, kind, device)
    return CausalScorer(adapter_dir, base_model, cutoff_len, device)
