"""Label-likelihood scoring: each prompt run once (its KV cache shared by the labels) gives the figures of
prompt + label run as one sequence per label, on a tiny Llama built on the fly with a LoRA adapter on it."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.dataset.prompter import Prompter
from tasks.evaluation.scoring import label_loglik
from tasks.training.data import IGNORE_INDEX, collate, encode_pair
from tasks.training.model import load_base_model
from tasks.training.tinymodel import build_tiny_llama

PROMPTER = Prompter.load()


def records(n: int) -> list[dict]:
    """Prompts of different lengths (so batches pad), with every label as the output somewhere."""
    return [{"instruction": PROMPTER.instruction, "input": f"day {i}: ETH 1d {'+' if i % 2 else '-'}{i % 7}.0%" + " up" * (i % 5),
             "output": PROMPTER.labels[i % 3]} for i in range(n)]


@torch.no_grad()
def reference_loglik(model, tokenizer, prompter, recs, cutoff_len, batch_size=8) -> np.ndarray:
    """The way before: prompt + label as one right-padded sequence per label, the prompt encoded once per label."""
    seqs = []
    for r in recs:
        prompt = prompter.prompt(r["instruction"], r["input"])
        for lab in prompter.labels:
            p_ids, r_ids = encode_pair(tokenizer, prompt, prompter.response(lab), cutoff_len)
            seqs.append({"input_ids": p_ids + r_ids, "labels": [IGNORE_INDEX] * len(p_ids) + r_ids})
    out = np.zeros(len(seqs))
    model.eval()
    for i in range(0, len(seqs), batch_size):
        batch = collate(seqs[i:i + batch_size], tokenizer.pad_token_id, torch.device("cpu"))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = batch["labels"][:, 1:]
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out[i:i + len(picked)] = (picked * (target != IGNORE_INDEX)).sum(-1).numpy()
    return out.reshape(len(recs), len(prompter.labels))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """(tokenizer, a LoRA-wrapped tiny Llama with non-zero adapter weights, a counter of the tokens it ran)."""
    from peft import LoraConfig, get_peft_model

    corpus = [PROMPTER.prompt(r["instruction"], r["input"]) + r["output"] for r in records(30)] + list(PROMPTER.labels)
    path: Path = build_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", corpus, vocab_size=400, hidden_size=32,
                                  layers=2, heads=2, seed=0, init_std=0.2)
    tok, base = load_base_model(str(path), torch.device("cpu"), torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    seen = {"tokens": 0}
    model.get_input_embeddings().register_forward_pre_hook(lambda _m, args: seen.__setitem__("tokens", seen["tokens"] + args[0].numel()))
    return tok, model, seen


def test_each_prompt_runs_once_and_scores_as_separate_sequences(scored):
    tok, model, seen = scored
    recs = records(11)
    seen["tokens"] = 0
    want = reference_loglik(model, tok, PROMPTER, recs, 256)
    reference_tokens, seen["tokens"] = seen["tokens"], 0
    got = label_loglik(model, tok, PROMPTER, recs, 256, batch_size=4)  # 4 does not divide 11: a short last batch
    assert got.shape == (11, 3)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.isfinite(got).all() and (got < 0).all()
    assert not np.allclose(got[:, 0], got[:, 1])  # the labels are told apart, not one figure copied
    assert seen["tokens"] < 0.5 * reference_tokens  # each prompt ran once, not once per label
    assert not model.training


@pytest.mark.parametrize("labels", [PROMPTER.labels, ("POSITIVE", "day", "up")], ids=["template", "one-token"])
def test_prompts_cut_at_cutoff_len_score_the_same(scored, labels):
    """Every prompt cut from the left: with the template's labels (of different token lengths here, so each
    label cuts the prompt its own way) and with labels of one token each (one cut, the prompt run once)."""
    tok, model, _ = scored
    prompter = replace(PROMPTER, labels=labels)
    recs = records(7)
    full = min(len(tok(prompter.prompt(r["instruction"], r["input"]), add_special_tokens=False)["input_ids"]) for r in recs)
    cutoff = full - 10
    np.testing.assert_allclose(label_loglik(model, tok, prompter, recs, cutoff, batch_size=3),
                               reference_loglik(model, tok, prompter, recs, cutoff), atol=1e-4, rtol=0)
    if labels != PROMPTER.labels:
        assert {len(tok(lab, add_special_tokens=False)["input_ids"]) for lab in labels} == {1}


def test_labels_of_different_token_lengths_with_cut_and_uncut_prompts(scored):
    """Labels of 1 to several tokens: the uncut prompts share one pass, the cut ones (whose prompt each label
    cuts differently) run one sequence per label; both match the reference."""
    tok, model, _ = scored
    prompter = replace(PROMPTER, labels=("POSITIVE", "NEUTRAL day up up", "NEG"))
    lengths = {lab: len(tok(lab, add_special_tokens=False)["input_ids"]) for lab in prompter.labels}
    assert len(set(lengths.values())) > 1
    recs = records(9)
    sizes = [len(tok(prompter.prompt(r["instruction"], r["input"]), add_special_tokens=False)["input_ids"]) for r in recs]
    cutoff = max(sizes) + 1 + min(lengths.values())  # the longest prompts are cut for the longer labels only
    cut = sum(n + 1 + max(lengths.values()) > cutoff for n in sizes)
    assert 0 < cut < len(recs)
    got = label_loglik(model, tok, prompter, recs, cutoff, batch_size=4)
    np.testing.assert_allclose(got, reference_loglik(model, tok, prompter, recs, cutoff), atol=1e-4, rtol=0)
