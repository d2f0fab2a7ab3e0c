"""`chainsignal status --verify` on a real ingested lake (anvil + bundled samples), then broken on purpose:
a truncated parquet file, a truncated manifest, a block stored twice. Each is named with its day, its file
and the command that repairs it, and the exit code says so; the clean lake passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

BIN = Path(sys.executable).parent / "chainsignal"


def status(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINSIGNAL_")}
    env["CHAINSIGNAL_STORAGE__DATA_DIR"] = str(data_dir)
    return subprocess.run([str(BIN), "status", *args], capture_output=True, text=True, timeout=180, env=env, cwd=data_dir.parent)


def a_day(lake: Path, dataset: str) -> Path:
    days = sorted(p for p in (lake / dataset).glob("date=*") if (p / "_manifest.json").is_file())
    return days[len(days) // 2]


def test_a_clean_lake_verifies(lake_copy, data_dir):
    out = status(data_dir, "--verify")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "verify: 0 problem(s): every committed file opens and adds up" in out.stdout


def test_a_truncated_file_is_named_with_its_repair(lake_copy, data_dir):
    day = a_day(lake_copy, "transactions")
    listed = json.loads((day / "_manifest.json").read_text())["files"][0]
    victim = day / listed
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    plain = status(data_dir)
    assert plain.returncode == 0  # plain status reads manifests only (and still does not crash)
    out = status(data_dir, "--verify")
    assert out.returncode == 4, out.stdout[-3000:]
    (line,) = [ln.strip() for ln in out.stdout.splitlines() if str(victim) in ln]
    when = day.name.removeprefix("date=")
    assert line.startswith(f"transactions {when}: {victim}: does not open")
    assert line.endswith(f"repair: chainsignal ingest --only chain --start {when} --end {when} --overwrite")


def test_a_truncated_manifest_does_not_crash_status(lake_copy, data_dir):
    day = a_day(lake_copy, "prices")
    manifest = day / "_manifest.json"
    manifest.write_text(manifest.read_text()[:20])
    plain = status(data_dir)
    assert plain.returncode == 0 and "unreadable manifest" in plain.stdout, plain.stderr[-2000:]
    out = status(data_dir, "--verify")
    assert out.returncode == 4
    when = day.name.removeprefix("date=")
    assert f"prices {when}: {manifest}: unreadable manifest (JSONDecodeError); repair: chainsignal ingest --only prices" in out.stdout


def test_a_block_stored_twice_is_found(lake_copy, data_dir):
    """What the chunking-change resume of issue 22 left behind: two files of one day holding the same blocks."""
    day = a_day(lake_copy, "blocks")
    manifest = json.loads((day / "_manifest.json").read_text())
    first = day / manifest["files"][0]
    pl.read_parquet(first).write_parquet(day / "copy.parquet")
    manifest["files"].append("copy.parquet")
    (day / "_manifest.json").write_text(json.dumps(manifest))
    out = status(data_dir, "--verify")
    assert out.returncode == 4
    text = out.stdout
    assert "files hold" in text and "the manifest says" in text and "is stored 2 times" in text
