"""Progress bars for long work (chain ingest, training): tqdm, on a terminal only, one bar per step.

``disable=None`` lets tqdm switch itself off when stderr is not a TTY, so Prefect workers, CI and
log files keep their one log line per chunk or step and no bar noise; ``TQDM_DISABLE=1`` turns the
bars off everywhere (tqdm reads ``TQDM_*`` environment overrides).

While a bar is drawn on a terminal, the console handlers of every logger (Prefect's on the root
logger, MLflow's, ours) write above it: the bar is cleared, the line written, the bar redrawn, so
no log line breaks it and it is drawn once. The INFO lines of the work the bar counts (the thread
that opened it: a training step's loss, a chunk's blocks) are left off the console, where the bar
shows the same; they still reach every other handler (the Prefect run's logs, a file). Warnings and
errors, other threads' lines and Python ``warnings`` are written above the bar.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from typing import IO, Any

_lock = threading.Lock()
_live: dict[int, int] = {}  # thread id -> bars open on a terminal by that thread


def progress(total: int, desc: str, unit: str, *, initial: int = 0, file: IO[str] | None = None,
             disable: bool | None = None) -> Any:
    bar = _bar_class()(total=total, initial=initial, desc=desc, unit=unit, file=file, disable=disable,
                       mininterval=0.5, dynamic_ncols=True, leave=True)
    if not bar.disable and _is_terminal(file if file is not None else sys.stderr):
        bar.owner = threading.get_ident()
        _bar_opened(bar.owner)
    return bar


@functools.cache
def _bar_class() -> type:
    from tqdm.auto import tqdm

    class Bar(tqdm):  # type: ignore[misc,valid-type]
        """tqdm's bar; closing it (or its end) lets the console's log lines through again."""

        owner: int | None = None  # the thread that opened it, while it is drawn on a terminal

        def close(self) -> None:
            try:
                super().close()
            finally:
                if self.owner is not None:
                    _bar_closed(self.owner)
                    self.owner = None

    return Bar


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _AboveTheBar(logging.Handler):
    """A console handler while a bar is live: the bar's own thread's INFO lines stay off the console,
    every other line is written with the bar cleared first and redrawn after (tqdm's external write mode)."""

    def __init__(self, inner: logging.StreamHandler):
        super().__init__()
        self.inner = inner

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if record.levelno < logging.WARNING and record.thread in _live:
            return False
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.inner.stream):
            return bool(self.inner.handle(record))

    def emit(self, record: logging.LogRecord) -> None:  # handle() above does the work
        self.inner.emit(record)


def _console_handler(handler: logging.Handler) -> bool:
    return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            and _is_terminal(handler.stream))


def _loggers() -> list[logging.Logger]:
    named = [lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    return [logging.getLogger(), *(lg for lg in named if lg.handlers)]


def _bar_opened(thread: int) -> None:
    with _lock:
        first = not _live
        _live[thread] = _live.get(thread, 0) + 1
        if first:
            for lg in _loggers():
                lg.handlers = [_AboveTheBar(h) if _console_handler(h) else h for h in lg.handlers]
            _warnings_above_the_bar(True)


def _bar_closed(thread: int) -> None:
    with _lock:
        _live[thread] -= 1
        if not _live[thread]:
            del _live[thread]
        if not _live:
            for lg in _loggers():
                if any(isinstance(h, _AboveTheBar) for h in lg.handlers):
                    lg.handlers = [h.inner if isinstance(h, _AboveTheBar) else h for h in lg.handlers]
            _warnings_above_the_bar(False)


_shown_before: Any = None  # warnings.showwarning while no bar is live


def _warnings_above_the_bar(on: bool) -> None:
    """Python ``warnings`` (written straight to stderr, not through logging) are written above a live bar too."""
    import warnings

    global _shown_before
    if on and _shown_before is None:
        _shown_before = warnings.showwarning

        def above(*args: Any, **kwargs: Any) -> None:
            from tqdm import tqdm

            with tqdm.external_write_mode(file=sys.stderr):
                _shown_before(*args, **kwargs)

        warnings.showwarning = above
    elif not on and _shown_before is not None:
        warnings.showwarning, _shown_before = _shown_before, None
