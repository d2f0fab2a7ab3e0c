"""The training data of a LoRA run: Alpaca records as token ids (prompt masked out of the loss unless
``train.train_on_inputs``), right-padded micro-batches (the reference path), the step plan (gradient
accumulation, steps per epoch, with packed rows or without) and the order examples are drawn in.

Training and scoring share :func:`encode_pair` and :func:`collate`, so the two cannot drift.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tasks.core.settings import TrainSettings
from tasks.dataset.prompter import Prompter
from tasks.training.fastpath.packing import IGNORE_INDEX, pack_by_tokens

Example = dict[str, list[int]]


# ----------------------------------------------------------------------------- tokens
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
                     train_on_inputs: bool) -> list[Example]:
    out = []
    for r in records:
        p_ids, r_ids = encode_pair(tokenizer, prompter.prompt(r["instruction"], r["input"]), prompter.response(r["output"]), cutoff_len)
        labels = (p_ids if train_on_inputs else [IGNORE_INDEX] * len(p_ids)) + r_ids
        out.append({"input_ids": p_ids + r_ids, "labels": labels})
    return out


def collate(batch: Sequence[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
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
def evaluate_loss(model, examples: Sequence[Example], pad_id: int, micro_batch_size: int, device: torch.device) -> float:
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


@torch.no_grad()
def label_loglik(model, tokenizer, prompter: Prompter, records: Sequence[dict[str, Any]], cutoff_len: int,
                 batch_size: int = 8) -> np.ndarray:
    """(n_records, n_labels) summed log-probabilities of each label's tokens (its EOS included) given the prompt,
    both as :func:`encode_pair` makes them for training. Leaves the model in eval mode.

    Each prompt runs once, ``batch_size`` prompts a pass: a label's first token is scored from the prompt's last
    logits, its later tokens (usually the EOS alone) by one short pass over every label on the prompt's KV cache
    repeated per label. A record whose prompt the labels cut differently (at ``cutoff_len``, labels of different
    token lengths) runs prompt + label as one padded sequence per label instead, ``batch_size`` sequences a pass.
    Either way the figures are those of prompt + label run as one sequence, up to float noise."""
    labels = [prompter.response(lab) for lab in prompter.labels]
    responses = [encode_pair(tokenizer, "", lab, cutoff_len)[1] for lab in labels]
    by_length = dict(zip(map(len, responses), labels, strict=True))  # the prompt's cut depends on it alone
    shared: list[tuple[int, list[int]]] = []
    separate: list[tuple[int, list[list[int]]]] = []
    for i, r in enumerate(records):
        prompt = prompter.prompt(r["instruction"], r["input"])
        cut = {n: encode_pair(tokenizer, prompt, lab, cutoff_len)[0] for n, lab in by_length.items()}
        prompts = [cut[len(resp)] for resp in responses]
        if all(p == prompts[0] for p in prompts):
            shared.append((i, prompts[0]))
        else:
            separate.append((i, prompts))
    out = np.zeros((len(records), len(labels)))
    device = next(model.parameters()).device
    model.eval()
    for s in range(0, len(shared), batch_size):
        chunk = shared[s:s + batch_size]
        out[[i for i, _ in chunk]] = _shared_prompt_loglik(model, [p for _, p in chunk], responses,
                                                           tokenizer.pad_token_id, device)
    seqs = [{"input_ids": p + resp, "labels": [IGNORE_INDEX] * len(p) + resp}
            for _, prompts in separate for p, resp in zip(prompts, responses, strict=True)]
    if seqs:
        out[[i for i, _ in separate]] = _sequence_loglik(model, seqs, tokenizer.pad_token_id, batch_size,
                                                         device).reshape(len(separate), len(labels))
    return out


def _cache_name() -> str:
    """What this transformers calls the KV cache, as a forward argument and an output (``cache`` since its 5.2x
    rename; ``past_key_values`` before, still accepted with a warning)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _shared_prompt_loglik(model, prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int,
                          device: torch.device) -> np.ndarray:
    """(len(prompts), len(responses)): every response after every prompt, each prompt run once."""
    n, k = len(prompts), len(responses)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    batch = collate([{"input_ids": p, "labels": p} for p in prompts], pad_id, device)
    keep = torch.unique(lengths - 1)  # the lm head runs on each prompt's last position only
    first = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=True,
                  logits_to_keep=keep)
    last = first.logits[torch.arange(n, device=device), torch.searchsorted(keep, lengths - 1)].float().log_softmax(-1)
    out = last[:, [r[0] for r in responses]]
    rest = max(len(r) for r in responses) - 1
    if rest:
        feed = torch.full((k, rest), pad_id, dtype=torch.long)
        target = torch.full((k, rest), IGNORE_INDEX, dtype=torch.long)
        for j, r in enumerate(responses):
            feed[j, :len(r) - 1] = torch.tensor(r[:-1])
            target[j, :len(r) - 1] = torch.tensor(r[1:])
        feed, target = feed.to(device).repeat(n, 1), target.to(device).repeat(n, 1)  # row b*k + j: prompt b, label j
        name = _cache_name()
        cache = getattr(first, name)
        cache.batch_repeat_interleave(k)
        mask = torch.cat([batch["attention_mask"].repeat_interleave(k, 0), (target != IGNORE_INDEX).long()], 1)
        positions = lengths.repeat_interleave(k)[:, None] + torch.arange(rest, device=device)
        logits = model(input_ids=feed, attention_mask=mask, position_ids=positions, use_cache=True,
                       **{name: cache}).logits.float()
        picked = logits.log_softmax(-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out = out + (picked * (target != IGNORE_INDEX)).sum(-1).view(n, k)
    return out.cpu().numpy()


def _sequence_loglik(model, seqs: Sequence[Example], pad_id: int, batch_size: int, device: torch.device) -> np.ndarray:
    """Summed log-probabilities of each sequence's labelled tokens, the sequences right-padded ``batch_size`` a pass."""
    out = np.zeros(len(seqs))
    for i in range(0, len(seqs), batch_size):
        batch = collate(seqs[i:i + batch_size], pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = batch["labels"][:, 1:]
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out[i:i + len(picked)] = (picked * (target != IGNORE_INDEX)).sum(-1).cpu().numpy()
    return out


# ----------------------------------------------------------------------------- steps
@dataclass(frozen=True)
class StepPlan:
    """How a run's examples become optimizer steps."""

    pack_tokens: int  # > 0: micro-batches are packed rows of up to this many tokens
    accum: int  # micro-batches per process per optimizer step
    steps_per_epoch: int
    total_steps: int
    units_per_micro_batch: int  # examples (or packed rows) one micro-batch takes, over all processes


def plan_steps(cfg: TrainSettings, examples: Sequence[Example], world: int) -> StepPlan:
    pack_tokens = cfg.pack_tokens if cfg.packing else 0
    if pack_tokens:
        # Rows of up to pack_tokens tokens, not micro_batch_size examples: an optimizer step takes
        # as many rows (per process) as hold about batch_size examples.
        rows_per_epoch = len(pack_by_tokens([len(e["input_ids"]) for e in examples], pack_tokens))
        accum = max(1, round(cfg.batch_size * rows_per_epoch / (max(1, len(examples)) * world)))
        steps_per_epoch = max(1, math.ceil(rows_per_epoch / (accum * world)))
    else:
        accum = cfg.batch_size // (cfg.micro_batch_size * world)
        steps_per_epoch = max(1, math.ceil(len(examples) / cfg.batch_size))
    return StepPlan(pack_tokens=pack_tokens, accum=accum, steps_per_epoch=steps_per_epoch,
                    total_steps=max(1, math.ceil(steps_per_epoch * cfg.epochs)),
                    units_per_micro_batch=world if pack_tokens else cfg.micro_batch_size * world)


class MicroBatches:
    """The examples each process trains on next. Every epoch is a fresh shuffle from a generator seeded
    with ``train.seed`` (with ``pack_tokens``: the shuffled examples packed into rows, the rows shuffled);
    a micro-batch takes the next units for all processes and gives each rank its slice. What is left of
    the epoch and the generator's state go into checkpoints, so a resumed run draws the same batches."""

    def __init__(self, examples: Sequence[Example], plan: StepPlan, micro_batch_size: int, seed: int,
                 weights: Sequence[float] | None = None):
        self.examples, self.plan, self.micro_batch_size = examples, plan, micro_batch_size
        self.weights = list(weights) if weights is not None else None  # per example: an epoch draws n examples by them
        self.gen = random.Random(seed)
        self.pending: list = []  # example indices, or (pack_tokens) rows of them

    def next(self, rank: int) -> list[Example]:
        per_step = self.plan.units_per_micro_batch
        if len(self.pending) < per_step:
            self.pending += self._epoch()
        idx, self.pending = self.pending[:per_step], self.pending[per_step:]
        if self.plan.pack_tokens:
            return [self.examples[i] for i in idx[rank]]
        return [self.examples[i] for i in idx[rank * self.micro_batch_size:(rank + 1) * self.micro_batch_size]]

    def _epoch(self) -> list:
        """The next epoch's units: shuffled example indices, or (pack_tokens) rows of them."""
        fresh = list(range(len(self.examples)))
        if self.weights is not None:  # class balance: drawn with replacement, each class as often in total
            fresh = self.gen.choices(fresh, weights=self.weights, k=len(fresh))
        else:
            self.gen.shuffle(fresh)
        if not self.plan.pack_tokens:
            return fresh
        lengths = [len(self.examples[i]["input_ids"]) for i in fresh]
        rows = [[fresh[k] for k in row] for row in pack_by_tokens(lengths, self.plan.pack_tokens)]
        self.gen.shuffle(rows)
        return rows

    def state(self) -> dict[str, Any]:
        return {"order": self.pending, "order_rng": self.gen.getstate()}

    def restore(self, state: dict[str, Any]) -> None:
        self.pending = list(state["order"])
        self.gen.setstate(state["order_rng"])
