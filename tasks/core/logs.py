"""Logging that lands in the Prefect run when there is one, and on stderr otherwise."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from tasks.core.errors import ChainsignalError


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


class _UserErrorsInOneLine(logging.Formatter):
    """The console's formatter, minus the traceback of a :class:`ChainsignalError` (the user gets one
    line; Prefect's API handler, a separate handler, still stores the whole record in the run's logs)."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and isinstance(record.exc_info[1], ChainsignalError):
            record = copy.copy(record)
            record.exc_info, record.exc_text = None, None
        return self.inner.format(record)


def user_errors_in_one_line_on_the_console() -> None:
    """Wrap the formatter of every console handler on the root logger (where Prefect puts its own)."""
    for handler in logging.getLogger().handlers:
        is_console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if is_console and not isinstance(handler.formatter, _UserErrorsInOneLine):
            handler.setFormatter(_UserErrorsInOneLine(handler.formatter or logging.Formatter()))
