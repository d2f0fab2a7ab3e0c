"""`chainsignal status --verify` on a real ingested lake (anvil + bundled samples), then broken on purpose:
a truncated parquet file, a truncated manifest, a block stored twice. Each is named with its day, its file
and the command that repairs it, and the exit code says so; the clean lake passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
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
    assert "note:" not in out.stdout  # every block's parent link was checked


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


def _blocks_days(lake: Path) -> list[Path]:
    return sorted(p for p in (lake / "blocks").glob("date=*") if (p / "_manifest.json").is_file())


def _rewrite(path: Path, change) -> None:
    """Rewrite one parquet file in place, as an editor (or another writer) would."""
    change(pl.read_parquet(path)).write_parquet(path)


def test_a_tampered_parent_hash_is_named_with_its_file_and_blocks(lake_copy, data_dir):
    days = _blocks_days(lake_copy)
    assert pl.read_parquet(days[0] / json.loads((days[0] / "_manifest.json").read_text())["files"][0])[
        "parent_hash"].null_count() == 0  # the ingest stores it
    day = days[len(days) // 2]
    victim = day / json.loads((day / "_manifest.json").read_text())["files"][0]
    rows = pl.read_parquet(victim)
    assert rows.height >= 3
    fake = "0x" + "ab" * 32
    # inside the file: the third block; across days: the day's first block (its parent is the day before's last)
    inside, first = rows["block_number"][2], rows["block_number"][0]
    _rewrite(victim, lambda df: df.with_columns(
        pl.when(pl.col("block_number").is_in([inside, first])).then(pl.lit(fake)).otherwise("parent_hash").alias("parent_hash")))
    out = status(data_dir, "--verify")
    assert out.returncode == 4, out.stdout[-3000:] + out.stderr[-2000:]
    when = day.name.removeprefix("date=")
    lines = [ln.strip() for ln in out.stdout.splitlines() if f"parent_hash {fake}" in ln]
    assert len(lines) == 2, out.stdout[-3000:]
    across, within = lines
    assert across.startswith(f"blocks {when}: {victim}: block {first}'s parent_hash {fake} is not the hash of block {first - 1}")
    previous_day = days[len(days) // 2 - 1]
    assert f"(block {first - 1} is in {previous_day}/" in across  # the link across days is checked
    assert within.startswith(f"blocks {when}: {victim}: block {inside}'s parent_hash {fake} is not the hash of block {inside - 1}")
    assert "is in" not in within
    assert within.endswith(f"repair: chainsignal ingest --only chain --start {when} --end {when} --overwrite")


def test_blocks_written_before_parent_hash_was_recorded_verify_with_a_note_and_still_read(
        lake_copy, data_dir, seeded_node):
    """A lake written before blocks stored parent_hash: verify checks everything else and says how to make
    the links checkable (exit 0); readers that ask for other columns (the ingest's resume point) keep working."""
    from flows.ingest_chain import ingest_chain
    from tasks.core.lake import Lake

    days = _blocks_days(lake_copy)
    old = days[:3]
    for day in old:
        for name in json.loads((day / "_manifest.json").read_text())["files"]:
            _rewrite(day / name, lambda df: df.drop("parent_hash"))
    out = status(data_dir, "--verify")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    first, last = (d.name.removeprefix("date=") for d in (old[0], old[-1]))
    (note,) = [ln.strip() for ln in out.stdout.splitlines() if ln.strip().startswith("note:")]
    assert f"blocks: 3 day(s) between {first} and {last} were written before parent_hash was recorded" in note
    assert note.endswith(f"re-ingest with --overwrite to verify: chainsignal ingest --only chain --start {first} "
                         f"--end {last} --overwrite")
    lake = Lake(lake_copy)
    assert lake.scan("blocks").select("block_number", "block_hash").collect().height > 0  # old and new files together
    # the day after the old ones, ingested again: its first chunk is checked against the old day's last block
    after = days[3]
    when = after.name.removeprefix("date=")
    for dataset in ("blocks", "transactions"):
        (lake_copy / dataset / after.name / "_manifest.json").unlink()
    node, _ = seeded_node
    day = date.fromisoformat(when)
    summary = ingest_chain(day, day, rpc_url=node.url, overwrite=True)
    assert summary.get("partitions_done") == 1, summary
    again = status(data_dir, "--verify")
    assert again.returncode == 0 and "written before parent_hash" in again.stdout
