"""What `chainsignal status` shows: lake coverage per dataset, gaps, recorded failures, the track record;
and what `chainsignal status --verify` checks: every manifest, every file it lists, the block chain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import polars as pl

from tasks.core.schemas import SCHEMAS

# which command rebuilds a dataset's day
_REPAIR = {"transactions": "ingest --only chain", "blocks": "ingest --only chain", "receipts": "ingest --only chain",
           "prices": "ingest --only prices", "posts": "ingest --only tweets", "sentiment": "ingest --only tweets"}


def lake_coverage(lake) -> list[dict[str, Any]]:
    """Per dataset: complete days, first and last, missing days in between, days with problems."""
    rows = []
    for dataset in SCHEMAS:
        days = lake.completed_days(dataset)
        if not days:
            rows.append({"dataset": dataset, "days": 0})
            continue
        have = set(days)
        span = (days[-1] - days[0]).days + 1
        missing = [days[0] + timedelta(days=i) for i in range(span) if days[0] + timedelta(days=i) not in have]
        problems = []
        for day in days:
            try:
                m = lake.manifest(dataset, day) or {}
            except ValueError:  # a truncated or corrupt manifest: `status --verify` names it
                problems.append(f"{day}: unreadable manifest")
                continue
            bad = {k: v for k, v in (m.get("sources") or {}).items() if not str(v).startswith("ok")}
            if bad or m.get("gaps") or m.get("stopped"):
                problems.append(f"{day}: {bad or m.get('gaps') or m.get('stopped')}")
        rows.append({"dataset": dataset, "days": len(days), "first": days[0].isoformat(), "last": days[-1].isoformat(),
                     "missing_days": len(missing), "first_missing": [d.isoformat() for d in missing[:5]],
                     "days_with_problems": len(problems), "problems": problems[:5]})
    return rows


@dataclass(frozen=True)
class Problem:
    dataset: str
    day: date
    where: str  # the file (or the day's manifest)
    what: str

    def line(self) -> str:
        repair = _REPAIR.get(self.dataset)
        fix = (f"; repair: chainsignal {repair} --start {self.day} --end {self.day} --overwrite" if repair
               else "; repair: rebuild it with the command that wrote it")
        return f"{self.dataset} {self.day}: {self.where}: {self.what}{fix}"


def _check_day(lake, dataset: str, day: date) -> tuple[list[Problem], pl.DataFrame | None]:
    """One committed day: its manifest reads, every listed file opens, rows add up. Returns the day's
    frame (for the chain checks) when everything opened."""
    folder = lake.partition_dir(dataset, day)
    try:
        manifest = lake.manifest(dataset, day) or {}
    except ValueError as exc:
        return [Problem(dataset, day, f"{folder}/_manifest.json", f"unreadable manifest ({type(exc).__name__})")], None
    files = [f"{folder}/{name}" for name in manifest.get("files", [])]
    problems, frames = [], []
    for path in files:
        try:
            frames.append(lake._scan_files(dataset, [path]).collect())
        except Exception as exc:  # missing, truncated, not parquet, wrong schema: all are the same problem here
            problems.append(Problem(dataset, day, path, f"does not open ({' '.join(str(exc).split())[:160]})"))
    if problems:
        return problems, None
    frame = pl.concat(frames) if frames else pl.DataFrame(schema=SCHEMAS[dataset])
    if "rows" in manifest and frame.height != manifest["rows"]:
        problems.append(Problem(dataset, day, f"{folder}", f"files hold {frame.height} rows, the manifest says {manifest['rows']}"))
    return problems, frame


def _check_blocks(blocks: pl.DataFrame) -> list[tuple[date, str]]:
    """Block numbers unique and contiguous; each block's parent_hash is the previous block's hash (when stored)."""
    if blocks.is_empty():
        return []
    b = blocks.sort("block_number").with_columns(pl.col("block_timestamp").dt.date().alias("day"))
    found = []
    dup = b.filter(pl.col("block_number").is_duplicated())
    if dup.height:
        copies = dup.filter(pl.col("block_number") == dup["block_number"][0]).height
        found.append((dup["day"][0], f"block {dup['block_number'][0]} is stored {copies} times"))
    gap = b.unique("block_number", keep="first").sort("block_number").with_columns(
        (pl.col("block_number") - pl.col("block_number").shift(1)).alias("step")).filter(pl.col("step") > 1)
    if gap.height:
        found.append((gap["day"][0], f"blocks missing before block {gap['block_number'][0]}"))
    if "parent_hash" in b.columns:
        broken = b.with_columns(pl.col("block_hash").shift(1).alias("previous"),
                                (pl.col("block_number") - pl.col("block_number").shift(1)).alias("step")
                                ).filter((pl.col("step") == 1) & (pl.col("parent_hash") != pl.col("previous")))
        if broken.height:
            found.append((broken["day"][0], f"block {broken['block_number'][0]}'s parent is not the stored block before it "
                                            "(a reorg or another chain)"))
    return found


def verify_lake(lake) -> list[Problem]:
    """Every committed day of every dataset read back; chain days also checked as one chain."""
    problems: list[Problem] = []
    for dataset in SCHEMAS:
        frames = []
        for day in lake.completed_days(dataset):
            found, frame = _check_day(lake, dataset, day)
            problems += found
            if dataset == "blocks" and frame is not None:
                frames.append(frame)
        if dataset == "blocks" and frames:
            problems += [Problem("blocks", day, "the stored chain", what) for day, what in _check_blocks(pl.concat(frames))]
    return problems
