"""A full disk while writing the lake, on a real small tmpfs: one `chainsignal: error: disk full writing <file>`
line (a StorageError, exit 2 like the other storage errors), no half-written file left, nothing committed;
any other OSError keeps its own type and traceback. Skipped where mounting a tmpfs is not permitted."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from tasks.core.errors import ChainsignalError, DiskFullError, StorageError
from tasks.core.storage import Lake, write_json
from tests.core.test_lake_recovery import prices

DAY = date(2021, 1, 5)
BIN = Path(sys.executable).parent / "chainsignal"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at tmp_path/disk (unmounted after the test)."""
    where = tmp_path / "disk"
    where.mkdir()
    try:
        got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here: a real small file system cannot be made for this test")
    if got.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({got.stderr.strip()}): needs root or CAP_SYS_ADMIN")
    yield where
    subprocess.run(["umount", "--lazy", str(where)], check=True)  # lazy: a failed test may still hold a file open


def fill(disk: Path) -> Path:
    """Write until the file system says ENOSPC; the filler file is returned (delete it to make room)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def visible(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_half_file(small_disk):
    lake = Lake(small_disk / "lake")
    filler = fill(small_disk)
    part = lake.open_partition("prices", DAY)
    target = part.dir / "t__prices.parquet"
    with pytest.raises(DiskFullError) as err:
        part.write(prices(DAY), "t__prices.parquet")
    message = str(err.value)
    assert message.startswith(f"disk full writing {target} (no space left on device; ") and "\n" not in message
    assert "rerun resumes" in message and isinstance(err.value, StorageError)
    assert visible(small_disk / "lake") == []  # no temporary file, no partial parquet file
    # room for the data file, none for the manifest: the day stays open, nothing half-written
    filler.unlink()
    part.write(prices(DAY), "t__prices.parquet")
    fill(small_disk)
    manifest = part.dir / "_manifest.json"
    with pytest.raises(DiskFullError, match=f"^disk full writing {manifest} "):
        part.commit({"rows": 2})
    assert visible(small_disk / "lake") == ["prices/date=2021-01-05/t__prices.parquet"]
    assert not lake.is_complete("prices", DAY)


def test_a_full_disk_while_writing_json_removes_the_temporary_file(small_disk):
    fill(small_disk)
    with pytest.raises(DiskFullError, match="disk full writing .*/meta.json"):
        write_json(small_disk / "lake" / "_meta" / "meta.json", {"key": "x" * 100_000})
    assert [p.name for p in (small_disk / "lake" / "_meta").iterdir()] == []


def test_another_os_error_is_not_called_a_full_disk(tmp_path):
    lake = Lake(tmp_path)
    part = lake.open_partition("prices", DAY)
    os.rmdir(part.dir)
    part.dir.write_bytes(b"")  # the day's folder is now a file: writing in it is ENOTDIR, a bug to show whole
    with pytest.raises(OSError) as err:
        part.write(prices(DAY), "t__prices.parquet")
    assert not isinstance(err.value, ChainsignalError) and err.value.errno in (errno.ENOTDIR, errno.EEXIST)


def test_the_cli_says_disk_full_in_one_line_and_exits_2(small_disk, tmp_path):
    """`chainsignal ingest --only prices` (the bundled candles) into a lake on a full disk (the session's
    Prefect server, not a temporary one per command)."""
    from prefect.settings import PREFECT_API_URL

    fill(small_disk)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINSIGNAL_")}
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), CHAINSIGNAL_STORAGE__DATA_DIR=str(tmp_path / "data"),
               CHAINSIGNAL_STORAGE__LAKE_URI=str(small_disk / "lake"))
    out = subprocess.run([str(BIN), "ingest", "--only", "prices", "--start", "2021-01-04", "--end", "2021-01-05"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("chainsignal: ")]
    target = small_disk / "lake" / "prices" / "date=2021-01-04" / "file__prices.parquet"
    assert len(lines) == 1 and lines[0].startswith(f"chainsignal: error: disk full writing {target} "), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert visible(small_disk / "lake") == []


def test_the_chain_ingest_stops_at_once_on_a_full_disk(seeded_node, small_disk, monkeypatch):
    """Not retried twice (5 s, then 30 s) on a disk that is still full: one attempt, the error named."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.ingest_chain import ingest_chain

    node, _ = seeded_node
    monkeypatch.setenv("CHAINSIGNAL_STORAGE__LAKE_URI", str(small_disk / "lake"))
    ingest_chain(DAY, DAY, rpc_url=node.url)  # the lake's chain, the day's range and plan recorded
    before = visible(small_disk / "lake")
    fill(small_disk)
    state = ingest_chain(DAY, DAY, overwrite=True, rpc_url=node.url, return_state=True)  # its chunks: no room
    with pytest.raises(DiskFullError, match=f"^disk full writing {small_disk / 'lake'}/.*/.staging/date={DAY}-"):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    (day_run,) = [r for r in runs if r.name.startswith("ingest-chain-day")]
    assert day_run.run_count == 1 and day_run.state.is_failed()
    assert visible(small_disk / "lake") == before  # the committed day as it was, no temporary file
