"""Housekeeping of a lake on local disk: writer locks, what a crashed writer left, half-done swaps.

    <lake>/<dataset>/.locks/date=YYYY-MM-DD.lock      <- flock: held shared by the day's writers
    <lake>/<dataset>/.staging/date=YYYY-MM-DD-<token>/ <- an --overwrite being written (lake.py)
    <lake>/<dataset>/.trash/date=YYYY-MM-DD-<token>/   <- the day it replaces, between the two renames
    <lake>/<dataset>/date=YYYY-MM-DD/.<name>.tmp-<token> <- a file being written

Every writer of a day's partition holds its lock *shared* from ``open_partition`` until its commit,
so concurrent ingests of the same days still run side by side as before (their files have unique
temporary names and appear by rename). Housekeeping of a day runs only under the lock taken
*exclusive* without waiting, that is when no live writer has the day open: a crash lets go of its
lock (the kernel drops it with the process), so what it left is cleaned by the next writer of the
day, and a file a live writer is using is never touched.

A crash between the two renames of an overwrite (the live folder moved to ``.trash``, the staging
folder not yet moved in) leaves the day without a folder. The staging folder is complete by then
(its manifest is written before the first rename), so the next reader or writer of the day moves
it in; a staging folder without a manifest is an overwrite that did not finish, and the ``.trash``
copy (the day as it was) is moved back instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
import weakref
from pathlib import Path

from tasks.core.logs import get_logger

MANIFEST = "_manifest.json"
STAGING = ".staging"
TRASH = ".trash"
LOCKS = ".locks"
_DAY = len("date=YYYY-MM-DD")


class DayLock:
    """A flock on ``<dataset>/.locks/<day>.lock`` (never deleted: removing a lock file races its users).
    Closed, and so let go, by :meth:`release`, or when it is garbage collected or its process ends."""

    def __init__(self, dataset_dir: Path, day_name: str):
        path = dataset_dir / LOCKS / f"{day_name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.release = weakref.finalize(self, os.close, self.fd)

    def try_exclusive(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def share(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_SH)  # waits only while someone cleans the day (milliseconds)


def open_day(dataset_dir: Path, day_name: str) -> DayLock:
    """A writer's lock on the day, held shared; when no other writer had the day open, what crashed
    writers left of it is settled first (:func:`settle`)."""
    lock = DayLock(dataset_dir, day_name)
    if lock.try_exclusive():
        settle(dataset_dir, day_name)
    lock.share()
    return lock


def half_done_days(dataset_dir: Path) -> list[str]:
    """Days with a staging or trash folder and no committed folder: an overwrite under way, or one that
    crashed between its renames. Cheap when there is none (two stat calls)."""
    names: set[str] = set()
    for sub in (STAGING, TRASH):
        if (dataset_dir / sub).is_dir():
            names |= {p.name[:_DAY] for p in (dataset_dir / sub).iterdir()}
    return sorted(n for n in names if not (dataset_dir / n / MANIFEST).is_file())


def recover_day(dataset_dir: Path, day_name: str) -> bool:
    """For readers: settle a day that has staging or trash folders if no writer has it open (True when
    it was settled). A lake on a read-only mount is left as it is."""
    if not (_entries(dataset_dir / STAGING, day_name) or _entries(dataset_dir / TRASH, day_name)):
        return False
    try:
        lock = DayLock(dataset_dir, day_name)
    except OSError:
        return False
    try:
        if not lock.try_exclusive():
            return False
        settle(dataset_dir, day_name)
        return True
    finally:
        lock.release()


def settle(dataset_dir: Path, day_name: str) -> None:
    """Under the day's exclusive lock: finish or roll back a half-done swap, then remove the day's
    staging and trash folders and temporary files, all left by writers that are gone."""
    final = dataset_dir / day_name
    staged, trashed = _entries(dataset_dir / STAGING, day_name), _entries(dataset_dir / TRASH, day_name)
    if not _complete(final):
        source = _newest_complete(staged) or _newest_complete(trashed)
        if source is not None:
            if final.exists():  # an unfinished folder: not visible to readers, and the complete one wins
                aside = dataset_dir / TRASH / f"{day_name}-{uuid.uuid4().hex[:8]}"
                aside.parent.mkdir(parents=True, exist_ok=True)
                os.replace(final, aside)
                trashed.append(aside)
            os.replace(source, final)
            how = "finished (its new files were complete)" if source in staged else "rolled back (the day as it was)"
            get_logger().warning("%s: an --overwrite interrupted between its two renames was %s", final, how)
    for folder in staged + trashed:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
    if final.is_dir():
        for tmp in final.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


def _entries(folder: Path, day_name: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{day_name}-*") if p.is_dir()) if folder.is_dir() else []


def _complete(folder: Path) -> bool:
    try:
        return isinstance(json.loads((folder / MANIFEST).read_bytes()), dict)
    except (OSError, ValueError):
        return False


def _newest_complete(folders: list[Path]) -> Path | None:
    done = [f for f in folders if _complete(f)]
    return max(done, key=lambda f: (f / MANIFEST).stat().st_mtime_ns) if done else None
