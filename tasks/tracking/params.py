"""A training run's settings read back from MLflow, where every param is a string (``train.cutoff_len``
is ``"512"``): parsed here, once, so that flows never parse param strings. Names are the
``Settings.flat_params()`` keys the train-lora flow logs."""

from __future__ import annotations

from typing import Any


def logged_cutoff_len(run: Any) -> int:
    """The token length the run trained with (scoring cuts prompts the same way)."""
    return int(run.data.params["train.cutoff_len"])


def logged_seed(run: Any) -> int:
    """The dataset seed of the run's settings (the baselines and bootstraps take it)."""
    return int(run.data.params["dataset.seed"])


def logged_base_model(run: Any) -> str:
    """The base model id or path the run trained from."""
    return run.data.params["train.base_model"]
