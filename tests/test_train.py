"""LoRA training on a tiny randomly initialised Llama built on the fly (CPU, a few steps)."""

import math
from pathlib import Path

import pytest
import torch

from tasks.evaluate import label_loglik, predict_labels
from tasks.prompter import Prompter
from tasks.settings import load_settings, with_overrides
from tasks.tinymodel import build_tiny_llama
from tasks.train import encode_pair, load_base_model, tokenize_records, train_lora_adapter

PROMPTER = Prompter.load()


def records(n: int, label_of=lambda i: ("POSITIVE", "NEUTRAL", "NEGATIVE")[i % 3]) -> list[dict]:
    return [{"instruction": PROMPTER.instruction, "input": f"day {i}: ETH 1d {'+' if i % 2 else '-'}{i % 7}.0%",
             "output": label_of(i)} for i in range(n)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    corpus = [PROMPTER.prompt(r["instruction"], r["input"]) + r["output"] for r in records(30)] + list(PROMPTER.labels)
    return build_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", corpus, vocab_size=400, hidden_size=32, layers=2,
                            heads=2, seed=0, init_std=0.2)


def test_prompt_is_cut_so_the_response_always_fits(tiny_model):
    tok, _ = load_base_model(str(tiny_model), torch.device("cpu"))
    prompt = PROMPTER.prompt(PROMPTER.instruction, "x " * 500)
    p_ids, r_ids = encode_pair(tok, prompt, "NEGATIVE", cutoff_len=64)
    assert len(p_ids) + len(r_ids) == 64
    assert r_ids[-1] == tok.eos_token_id and tok.decode(r_ids[:-1]) == "NEGATIVE"


def test_loss_only_on_the_response_unless_train_on_inputs(tiny_model):
    tok, _ = load_base_model(str(tiny_model), torch.device("cpu"))
    recs = records(2)
    masked = tokenize_records(tok, PROMPTER, recs, 128, train_on_inputs=False)[0]
    full = tokenize_records(tok, PROMPTER, recs, 128, train_on_inputs=True)[0]
    n_resp = len(tok(recs[0]["output"], add_special_tokens=False)["input_ids"]) + 1
    assert sum(x != -100 for x in masked["labels"]) == n_resp
    assert full["labels"] == full["input_ids"]


def test_training_learns_and_saves_a_loadable_adapter(tiny_model, tmp_path):
    from peft import PeftModel

    cfg = with_overrides(load_settings(), train={"epochs": 12, "batch_size": 8, "micro_batch_size": 4,
                                                 "learning_rate": 5e-3, "cutoff_len": 96}).train
    seen = []
    # Every day says POSITIVE: a model that learns anything must come to prefer it.
    train = records(24, label_of=lambda i: "POSITIVE")
    result = train_lora_adapter(cfg, str(tiny_model), train, records(6), tmp_path / "adapter",
                                log_metrics=lambda m, s: seen.append((s, m)))
    assert math.isfinite(result.train_loss_last) and result.val_loss is not None
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert 0 < result.trainable_share < 0.2 and result.steps == len(seen) - 1
    first, last = seen[0][1]["train_loss"], seen[-2][1]["train_loss"]
    assert last < first
    tok, base = load_base_model(str(tiny_model), torch.device("cpu"))
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    preds, probs = predict_labels(label_loglik(model, tok, PROMPTER, records(6), 96), PROMPTER.labels)
    assert preds == ["POSITIVE"] * 6  # label-likelihood scoring picks the label the model prefers
    assert probs.shape == (6, 3) and abs(probs.sum(axis=1) - 1).max() < 1e-6
