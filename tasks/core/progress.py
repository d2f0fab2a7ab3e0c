"""Progress bars for long work (chain ingest, training): tqdm, on a terminal only.

``disable=None`` lets tqdm switch itself off when stderr is not a TTY, so Prefect workers, CI and
log files keep their one log line per chunk or step and no bar noise; ``TQDM_DISABLE=1`` turns the
bars off everywhere (tqdm reads ``TQDM_*`` environment overrides).
"""

from __future__ import annotations

from typing import IO, Any


def progress(total: int, desc: str, unit: str, *, initial: int = 0, file: IO[str] | None = None,
             disable: bool | None = None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file, disable=disable, mininterval=0.5,
                dynamic_ncols=True, leave=True)
