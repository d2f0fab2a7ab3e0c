"""One walk-forward fold's LoRA model: trained on the fold's training records, scored on its validation and test
records. Apart from ``walkforward.py`` (which cuts and labels the folds with polars) so that it runs where polars
does not: the GPU image (bench/walk_forward_encoder_gpu.py trains its folds there with this function)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.dataset.prompter import Prompter

SCORED = ("validation", "test")  # the splits a fold predicts


def fold_lora(cfg: Any, records: dict[str, list[dict[str, Any]]], prompter: Prompter, model_dir_for: Callable[[str], Path],
              out_dir: Path, log_metrics: Callable[[dict[str, float], int], None] | None = None) -> tuple[dict[str, list[str]], Any]:
    """Train a LoRA adapter of ``cfg.model_kind`` on the fold's training records (selected on the fold's validation
    records) and score validation and test (label likelihood for the causal kind, the head for the encoder):
    (split -> labels, the training result). Folds run in threads: the lazy transformers names are resolved first, once."""
    from tasks.evaluation.scoring import load_scorer
    from tasks.training.model import import_hf_names

    import_hf_names()

    if cfg.model_kind == "encoder":
        from tasks.training.encoder import train_encoder_adapter

        base = cfg.base_model
        result = train_encoder_adapter(cfg, records["train"], records["validation"], out_dir, "class", log_metrics)
    else:
        from tasks.training.tinymodel import resolve_base_model
        from tasks.training.train import train_lora_adapter

        corpus = [prompter.prompt(r["instruction"], r["input"]) + r["output"] for r in records["train"]] + list(prompter.labels)
        base, _ = resolve_base_model(cfg, model_dir_for, corpus)  # the tiny model's vocabulary: this fold's training days only
        result = train_lora_adapter(cfg, base, records["train"], records["validation"], out_dir, log_metrics)
    scorer = load_scorer(out_dir, base, cfg.cutoff_len, model_type=cfg.model_kind, kind="class", device=cfg.device)
    return {s: scorer.labels(records[s])[0] for s in SCORED}, result
