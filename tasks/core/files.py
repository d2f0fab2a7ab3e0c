"""Every local file appears whole: written under a temporary name in its folder, then renamed.

JSON is written indented with sorted keys, so a document's bytes depend on its content only. A full
disk (``ENOSPC``, or ``EDQUOT`` for a spent quota) while writing is a :class:`DiskFullError` naming the
file, and the temporary file is removed; any other error is left as it is.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tasks.core.errors import DiskFullError

_FULL = {errno.ENOSPC, errno.EDQUOT}
# polars reports IO errors of its own writers as text: "... No space left on device (os error 28)"
_FULL_TEXT = tuple(f"(os error {code})" for code in sorted(_FULL))


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _FULL
    return type(exc).__module__.startswith("polars") and any(t in str(exc) for t in _FULL_TEXT)


def disk_full_error(path: Path | str, exc: BaseException) -> DiskFullError:
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = f"{shutil.disk_usage(where).free / 2**20:.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    reason = "disk quota exceeded" if "quota" in str(exc).lower() else "no space left on device"
    return DiskFullError(f"disk full writing {path} ({reason}; {free}): free some space (or point storage.data_dir "
                         "elsewhere) and run the command again; what was committed is kept and the rerun resumes")


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed to ``path`` when the block succeeds,
    removed when it fails (a full disk then raises :class:`DiskFullError` naming ``path``)."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from exc
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with written_whole(path) as tmp:
        tmp.write_bytes(data)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_json(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, json_bytes(obj))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
