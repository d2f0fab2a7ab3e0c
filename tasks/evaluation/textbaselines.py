"""Neural text baseline (the AG News study's comparison): a BiLSTM with attention over the same
record text the LoRA model reads, and a weighted-voting ensemble of the models.

Word-level vocabulary from the training split only; trained from scratch on CPU (or GPU) in
seconds at chainsignal's sizes. Parameter count and peak memory are reported next to LoRA's.
"""

from __future__ import annotations

import re
import resource
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

_TOKEN = re.compile(r"[a-z]+|[+-]?\d+(?:\.\d+)?%?|[^\sa-z\d]")


def words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class BiLSTMAttention(nn.Module):
    def __init__(self, vocab_size: int, n_classes: int, embed_dim: int = 32, hidden: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(2 * hidden, 1)
        self.out = nn.Linear(2 * hidden, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(ids))
        logits = self.score(h).squeeze(-1).masked_fill(ids == 0, float("-inf"))
        weights = torch.softmax(logits, dim=1).unsqueeze(-1)  # attention over time steps
        return self.out((weights * h).sum(1))


@dataclass
class TextBaseline:
    model: BiLSTMAttention
    vocab: dict[str, int]
    labels: tuple[str, ...]
    max_len: int
    trainable_params: int
    peak_memory_mb: float

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        rows = [[self.vocab.get(w, 1) for w in words(t)][-self.max_len:] or [1] for t in texts]
        width = max(len(r) for r in rows)
        return torch.tensor([r + [0] * (width - len(r)) for r in rows])

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities (softmax of the head), columns in ``labels`` order."""
        self.model.eval()
        return torch.softmax(self.model(self.encode(texts)).float(), dim=-1).numpy()

    @torch.no_grad()
    def predict(self, texts: Sequence[str]) -> list[str]:
        self.model.eval()
        return [self.labels[i] for i in self.model(self.encode(texts)).argmax(-1).tolist()]


def train_bilstm(texts: Sequence[str], labels: Sequence[str], classes: Sequence[str], *, seed: int, epochs: int = 15,
                 max_vocab: int = 5000, max_len: int = 256, lr: float = 5e-3, batch_size: int = 16) -> TextBaseline:
    torch.manual_seed(seed)
    counts = Counter(w for t in texts for w in words(t))
    vocab = {w: i + 2 for i, (w, _) in enumerate(counts.most_common(max_vocab))}  # 0 pad, 1 unknown
    model = BiLSTMAttention(len(vocab) + 2, len(classes))
    base = TextBaseline(model, vocab, tuple(classes), max_len, sum(p.numel() for p in model.parameters()), 0.0)
    x = base.encode(texts)
    y = torch.tensor([classes.index(lab) for lab in labels])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    base.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return base


def weighted_vote(predictions: dict[str, Sequence[str]], weights: dict[str, float], classes: Sequence[str]) -> list[str]:
    """Each model votes for its label with its weight (e.g. its validation macro-F1); ties go to
    the first class in ``classes`` order among the tied."""
    n = len(next(iter(predictions.values())))
    out = []
    for i in range(n):
        tally = {c: 0.0 for c in classes}
        for name, preds in predictions.items():
            tally[preds[i]] += weights.get(name, 0.0)
        out.append(max(classes, key=lambda c: tally[c]))
    return out
