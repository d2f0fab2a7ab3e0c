"""Logging that lands in the Prefect run when there is one, and on stderr otherwise."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


def get_logger(name: str = "chainsignal") -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:  # the training core runs without prefect (GPU bench image)
        pass
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return logger


@contextmanager
def quiet_peft_wrap() -> Iterator[None]:
    """Around peft's model wrapping: peft 0.21 reads ``model.is_gradient_checkpointing`` each time it wraps
    a model, and transformers 5 answers with a FutureWarning (renamed ``is_activation_checkpointing``).
    Nothing a user of chainsignal can act on, so that one warning is dropped; every other still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
