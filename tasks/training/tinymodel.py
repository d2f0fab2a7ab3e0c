"""A tiny Llama-architecture model and BPE tokenizer, built offline on the fly.

Saved with ``save_pretrained`` so the same loading code (``AutoModelForCausalLM.from_pretrained``)
serves this model, a hub id or a local path. Randomly initialised: it learns only what the LoRA
run teaches it, which is the honest floor for the demo.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def build_tiny_llama(out_dir: Path, corpus: Iterable[str], *, vocab_size: int, hidden_size: int, layers: int,
                     heads: int, seed: int, init_std: float = 0.02, max_positions: int = 1024) -> Path:
    """Train a byte-level BPE tokenizer on ``corpus``, make a random LlamaForCausalLM, save both."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    tokenizer.save_pretrained(out_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    (out_dir / "chainsignal_model.json").write_text(json.dumps({
        "kind": "tiny-llama", "built": "offline, random init", "vocab_size": len(tokenizer),
        "hidden_size": hidden_size, "layers": layers, "heads": heads, "seed": seed, "init_std": init_std,
    }, indent=2))
    return out_dir


def resolve_base_model(train_cfg, model_dir_for, corpus: list[str]) -> tuple[str, bool]:
    """(name or path to load, whether it was built here). "tiny-llama" is built on the fly."""
    import hashlib

    if train_cfg.base_model != "tiny-llama":
        return train_cfg.base_model, False
    key = hashlib.sha256(json.dumps([train_cfg.tiny_vocab_size, train_cfg.tiny_hidden_size, train_cfg.tiny_layers,
                                     train_cfg.tiny_heads, train_cfg.tiny_init_std, train_cfg.seed, *corpus]).encode()).hexdigest()[:12]
    path = build_tiny_llama(model_dir_for(f"tiny-llama-{key}"), corpus, vocab_size=train_cfg.tiny_vocab_size,
                            hidden_size=train_cfg.tiny_hidden_size, layers=train_cfg.tiny_layers,
                            heads=train_cfg.tiny_heads, seed=train_cfg.seed, init_std=train_cfg.tiny_init_std)
    return str(path), True
