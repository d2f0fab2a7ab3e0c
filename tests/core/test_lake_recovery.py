"""What a crash or a bad file leaves in a local lake, and how the next reader or writer deals with it:
an unreadable manifest (the day is not committed, and is written again), the debris of crashed writers
(removed by the next writer of the day, never while a live writer uses it), and an --overwrite killed
between its two renames (finished, or rolled back, by the next reader or writer).

Crashes are real: a writer in a subprocess killed with SIGKILL at the exact point (after the first
rename of the swap; while it holds a partition open)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from tasks.core.schemas import PRICES
from tasks.core.storage import Lake

DAY = date(2021, 1, 5)


def prices(day: date, close: float = 1.5, assets: tuple[str, ...] = ("ETH", "BTC")) -> pl.DataFrame:
    n = len(assets)
    return pl.DataFrame({"date": [day] * n, "asset": list(assets), "open_usd": [1.0] * n, "high_usd": [2.0 * close] * n,
                         "low_usd": [0.5] * n, "close_usd": [close] * n, "volume_base": [10.0] * n, "source": ["t"] * n},
                        schema=PRICES)


def commit_day(lake: Lake, day: date, close: float = 1.5, overwrite: bool = False) -> None:
    part = lake.open_partition("prices", day, overwrite)
    part.write(prices(day, close), "t__prices.parquet")
    part.commit({"rows": 2})


def writer(root: Path, body: str) -> subprocess.Popen:
    """A writer process on the lake at ``root``: ``lake``, ``DAY``, ``prices`` and ``PRICES`` are defined."""
    head = textwrap.dedent(f"""
        import os, signal, sys
        from datetime import date
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from tests.core.test_lake_recovery import prices, DAY
        from tasks.core.storage import Lake
        lake = Lake({str(root)!r})
    """)
    return subprocess.Popen([sys.executable, "-c", head + textwrap.dedent(body)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def killed_after_first_rename(root: Path, close: float) -> None:
    """An --overwrite of DAY killed (SIGKILL) right after the live folder went to .trash."""
    proc = writer(root, f"""
        import tasks.core.lake as lake_module
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if "/.trash/" in str(dst):
                os.kill(os.getpid(), signal.SIGKILL)  # the crash: between the two renames
        lake_module.os.replace = replace
        part = lake.open_partition("prices", DAY, overwrite=True)
        part.write(prices(DAY, {close}), "t__prices.parquet")
        part.commit({{"rows": 2}})
        print("not killed")
    """)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out + err


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".locks" not in p.parts)


# ----------------------------------------------------------------------------- an unreadable manifest

def test_an_unreadable_manifest_is_a_day_not_committed_and_is_written_again(tmp_path, caplog):
    lake = Lake(tmp_path)
    days = [date(2021, 1, d) for d in (4, 5, 6)]
    for day in days:
        commit_day(lake, day)
    manifest = lake.partition_dir("prices", DAY) / "_manifest.json"
    manifest.write_text(manifest.read_text()[:20])  # truncated, as a crash on a non-atomic copy leaves it
    with caplog.at_level(logging.WARNING):
        assert lake.completed_days("prices") == [days[0], days[2]]  # readers skip the day, as any open day
        assert not lake.is_complete("prices", DAY) and lake.manifest("prices", DAY) is None
        assert lake.scan("prices").collect()["date"].unique().sort().to_list() == [days[0], days[2]]
        assert len(lake.partition_files("prices")) == 2
    warned = [r.getMessage() for r in caplog.records if "unreadable manifest" in r.getMessage()]
    assert len(warned) == 1 and str(manifest) in warned[0] and "JSONDecodeError" in warned[0]
    # `chainsignal status` still sees (and names) it
    assert lake.completed_days("prices", include_unreadable=True) == days
    with pytest.raises(json.JSONDecodeError):
        lake.manifest("prices", DAY, strict=True)
    # the next write of the day (what the next ingest does for a day not complete) replaces it atomically
    commit_day(lake, DAY, close=1.5)
    assert json.loads(manifest.read_text())["files"] == ["t__prices.parquet"]
    assert lake.completed_days("prices") == days and lake.scan("prices").collect().height == 6


@pytest.mark.parametrize("body", ['["a list"]', '{"files": "not a list"}', "\xff\xfe"])
def test_a_manifest_that_is_json_but_not_a_manifest_is_unreadable_too(tmp_path, body):
    lake = Lake(tmp_path)
    commit_day(lake, DAY)
    (lake.partition_dir("prices", DAY) / "_manifest.json").write_bytes(body.encode("latin-1"))
    assert lake.completed_days("prices") == [] and lake.scan("prices").collect().height == 0
    with pytest.raises(ValueError):
        lake.manifest("prices", DAY, strict=True)


# ----------------------------------------------------------------------------- debris of crashed writers

def test_what_a_killed_writer_left_is_removed_by_the_next_writer_of_the_day(tmp_path):
    lake = Lake(tmp_path)
    commit_day(lake, DAY)
    before = lake.scan("prices").collect()
    proc = writer(tmp_path, """
        part = lake.open_partition("prices", DAY, overwrite=True)
        part.write(prices(DAY, 7.0), "t__prices.parquet")
        (lake.partition_dir("prices", DAY) / ".t__prices.parquet.tmp-0badf00d").write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    debris = [p for p in tree(tmp_path) if ".staging/" in p or ".tmp-" in p]
    assert len(debris) == 3, tree(tmp_path)  # the staging folder, its file, the temporary file
    assert lake.scan("prices").collect().equals(before)  # readers never saw any of it
    lake.open_partition("prices", date(2021, 1, 6))  # another day's writer: this day's debris is not its business
    assert [p for p in tree(tmp_path) if ".staging/" in p or ".tmp-" in p] == debris
    lake.open_partition("prices", DAY)  # the day's next writer
    assert not [p for p in tree(tmp_path) if ".staging/" in p or ".tmp-" in p or ".trash/" in p], tree(tmp_path)
    assert lake.scan("prices").collect().equals(before)


def test_a_live_writers_files_are_left_alone(tmp_path):
    """Two ingests of the same day at once (which issue 22 found safe) stay safe: the second does not
    remove the first's temporary file (nor, with --overwrite, its staging folder), and both commit."""
    lake = Lake(tmp_path)
    proc = writer(tmp_path, """
        part = lake.open_partition("prices", DAY)
        staged = lake.open_partition("prices", DAY, overwrite=True)
        tmp = part.dir / ".t__prices.parquet.tmp-1ive0000"
        tmp.write_bytes(b"being written")
        staged.write(prices(DAY, 7.0), "t__prices.parquet")
        print("open", flush=True)
        sys.stdin.readline()
        os.replace(tmp, part.dir / "t__prices.parquet")  # its temporary file is still there for it
        part.commit({"rows": 2})
        staged.commit({"rows": 2})
        print("committed", flush=True)
    """)
    try:
        assert proc.stdout.readline().strip() == "open", proc.stderr.read()
        in_use = [p for p in tree(tmp_path) if ".staging/" in p or ".tmp-" in p]
        assert len(in_use) == 3, tree(tmp_path)
        commit_day(lake, DAY, close=3.0)  # a concurrent writer of the same day
        assert lake.scan("prices").collect()["close_usd"].to_list() == [3.0, 3.0]
        assert [p for p in tree(tmp_path) if ".staging/" in p or ".tmp-" in p] == in_use
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "committed", err
    assert lake.scan("prices").collect()["close_usd"].to_list() == [7.0, 7.0]  # the last commit wins, whole
    lake.open_partition("prices", DAY)
    assert not [p for p in tree(tmp_path) if ".staging/" in p or ".trash/" in p or ".tmp-" in p]


# ----------------------------------------------------------------------------- an --overwrite killed between its renames

def test_an_overwrite_killed_between_its_renames_is_finished_by_the_next_reader(tmp_path):
    lake = Lake(tmp_path)
    commit_day(lake, DAY, close=1.5)
    killed_after_first_rename(tmp_path, close=7.0)
    assert not lake.partition_dir("prices", DAY).exists()  # the day vanished, as the crash left it
    assert lake.completed_days("prices") == [DAY]  # the reader finishes the swap: the staging was complete
    assert lake.scan("prices").collect()["close_usd"].to_list() == [7.0, 7.0]
    assert not [p for p in tree(tmp_path) if ".staging/" in p or ".trash/" in p], tree(tmp_path)


def test_an_overwrite_killed_between_its_renames_is_settled_by_the_next_writer(tmp_path):
    lake = Lake(tmp_path)
    commit_day(lake, DAY, close=1.5)
    killed_after_first_rename(tmp_path, close=7.0)
    lake.open_partition("prices", DAY)  # e.g. the next ingest (without --overwrite) of the day
    assert lake.is_complete("prices", DAY)
    assert lake.scan("prices").collect()["close_usd"].to_list() == [7.0, 7.0]


def test_an_incomplete_staging_folder_rolls_the_day_back_from_trash(tmp_path):
    """A staging folder without a manifest (an overwrite that never finished writing): the day comes back
    as it was, from .trash, for the first reader that asks for it."""
    lake = Lake(tmp_path)
    commit_day(lake, DAY, close=1.5)
    killed_after_first_rename(tmp_path, close=7.0)
    (staging,) = (tmp_path / "prices" / ".staging").iterdir()
    (staging / "_manifest.json").unlink()
    assert lake.is_complete("prices", DAY)
    assert lake.scan("prices").collect()["close_usd"].to_list() == [1.5, 1.5]
    assert not [p for p in tree(tmp_path) if ".staging/" in p or ".trash/" in p], tree(tmp_path)
