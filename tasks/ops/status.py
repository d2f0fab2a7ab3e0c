"""What `chainsignal status` shows: lake coverage per dataset, gaps, recorded failures, the track record;
what `chainsignal status --verify` checks: every manifest, every file it lists, the block chain; and with
``--node``, whether the node still serves the stored chain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import polars as pl

from tasks.chain.blockrange import BlockClock
from tasks.chain.identity import ChainIdentity, recorded_chain
from tasks.core.schemas import SCHEMAS

# which command rebuilds a dataset's day
_REPAIR = {"transactions": "ingest --only chain", "blocks": "ingest --only chain", "receipts": "ingest --only chain",
           "prices": "ingest --only prices", "posts": "ingest --only tweets", "sentiment": "ingest --only tweets"}


def lake_coverage(lake) -> list[dict[str, Any]]:
    """Per dataset: complete days, first and last, missing days in between, days with problems."""
    rows = []
    for dataset in SCHEMAS:
        days = lake.completed_days(dataset, include_unreadable=True)
        if not days:
            rows.append({"dataset": dataset, "days": 0})
            continue
        have = set(days)
        span = (days[-1] - days[0]).days + 1
        missing = [days[0] + timedelta(days=i) for i in range(span) if days[0] + timedelta(days=i) not in have]
        problems = []
        for day in days:
            try:
                m = lake.manifest(dataset, day, strict=True) or {}
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
    last: date | None = None  # the problem runs from day to here (the repair covers them all)

    def line(self) -> str:
        repair = _REPAIR.get(self.dataset)
        fix = (f"; repair: chainsignal {repair} --start {self.day} --end {self.last or self.day} --overwrite" if repair
               else "; repair: rebuild it with the command that wrote it")
        return f"{self.dataset} {self.day}: {self.where}: {self.what}{fix}"


_ADDED_LATER = {"blocks": "parent_hash"}  # a column files written before it was recorded lack (null on read here)
_MAX_BREAKS = 10  # broken links named one by one; the rest counted


def _read_file(lake, dataset: str, path) -> tuple[pl.DataFrame, bool]:
    """A listed file's rows in the contract's shape, and whether it was written before a column added
    since (blocks' parent_hash): that column is then null and what it checks is not checked."""
    try:
        return lake._scan_files(dataset, [path]).collect(), False
    except pl.exceptions.ColumnNotFoundError as exc:
        later = _ADDED_LATER.get(dataset)
        if later is None or later not in str(exc):
            raise
    schema = SCHEMAS[dataset]
    frame = lake._scan_files(dataset, [path]).select([c for c in schema if c != later]).collect()
    return frame.with_columns(pl.lit(None, schema[later]).alias(later)).select(list(schema)), True


def _check_day(lake, dataset: str, day: date) -> tuple[list[Problem], pl.DataFrame | None, bool]:
    """One committed day: its manifest reads, every listed file opens, rows add up. Returns the day's
    frame (for the chain checks, with each row's ``file``) when everything opened, and whether a file
    of the day predates a column added since."""
    folder = lake.partition_dir(dataset, day)
    try:
        manifest = lake.manifest(dataset, day, strict=True) or {}
    except ValueError as exc:
        return [Problem(dataset, day, f"{folder}/_manifest.json", f"unreadable manifest ({type(exc).__name__})")], None, False
    files = [f"{folder}/{name}" for name in manifest.get("files", [])]
    problems, frames, old = [], [], False
    for path in files:
        try:
            frame, before = _read_file(lake, dataset, path)
        except Exception as exc:  # missing, truncated, not parquet, wrong schema: all are the same problem here
            problems.append(Problem(dataset, day, path, f"does not open ({' '.join(str(exc).split())[:160]})"))
            continue
        frames.append(frame.with_columns(pl.lit(path).alias("file")))
        old |= before
    if problems:
        return problems, None, old
    frame = pl.concat(frames) if frames else pl.DataFrame(schema={**SCHEMAS[dataset], "file": pl.String})
    if "rows" in manifest and frame.height != manifest["rows"]:
        problems.append(Problem(dataset, day, f"{folder}", f"files hold {frame.height} rows, the manifest says {manifest['rows']}"))
    return problems, frame, old


def _check_blocks(blocks: pl.DataFrame) -> list[Problem]:
    """Block numbers unique and contiguous; each block's parent_hash is the hash of the stored block
    before it, inside a file, across files and across days (unchecked where parent_hash is null: a
    file written before it was recorded)."""
    if blocks.is_empty():
        return []
    b = blocks.sort("block_number").with_columns(pl.col("block_timestamp").dt.date().alias("day"))
    found = []
    dup = b.filter(pl.col("block_number").is_duplicated())
    if dup.height:
        copies = dup.filter(pl.col("block_number") == dup["block_number"][0])
        found.append(Problem("blocks", dup["day"][0], "the stored chain", f"block {dup['block_number'][0]} is stored "
                             f"{copies.height} times ({', '.join(sorted(set(copies['file'])))})"))
    one = b.unique("block_number", keep="first", maintain_order=True).with_columns(
        pl.col("block_number").diff().alias("step"), pl.col("block_hash").shift(1).alias("previous_hash"),
        pl.col("file").shift(1).alias("previous_file"))
    gap = one.filter(pl.col("step") > 1)
    if gap.height:
        found.append(Problem("blocks", gap["day"][0], "the stored chain", f"blocks missing before block {gap['block_number'][0]}"))
    broken = one.filter((pl.col("step") == 1) & (pl.col("parent_hash") != pl.col("previous_hash")))
    for r in broken.head(_MAX_BREAKS).iter_rows(named=True):
        n = r["block_number"]
        where = "" if r["previous_file"] == r["file"] else f" (block {n - 1} is in {r['previous_file']})"
        found.append(Problem("blocks", r["day"], r["file"], f"block {n}'s parent_hash {r['parent_hash']} is not the hash "
                             f"of block {n - 1}, {r['previous_hash']}{where}: a reorg, another chain or an edited file"))
    if broken.height > _MAX_BREAKS:
        found.append(Problem("blocks", broken["day"][_MAX_BREAKS], "the stored chain",
                             f"{broken.height - _MAX_BREAKS} more broken parent links after these"))
    return found


def check_against_node(blocks: pl.DataFrame, rpc, held: ChainIdentity | None) -> tuple[list[Problem], str]:
    """Whether the node behind ``rpc`` serves the stored blocks: (problems, one line on what was asked).

    First the chain identity the lake recorded (``held``, tasks.chain.identity) against the node's. Then: the
    stored blocks were checked as one hash chain (:func:`_check_blocks`), so a stored block whose hash the node
    has at the same height vouches for every stored block linked below it. So the node is asked for the last
    block of the newest day, and only when it disagrees, bisecting over the days' last blocks, for the first
    day it disagrees on: a few calls for years of days."""
    if blocks.is_empty():
        return [], "node: no stored block to compare"
    tips = (blocks.with_columns(pl.col("block_timestamp").dt.date().alias("day")).sort("block_number")
            .group_by("day", maintain_order=True).agg(pl.col("block_number").last(), pl.col("block_hash").last()))
    days, numbers, hashes = tips["day"].to_list(), tips["block_number"].to_list(), tips["block_hash"].to_list()
    if held is not None:
        node = BlockClock(rpc).identity()
        if node != held:
            return [Problem("blocks", days[0], "the stored chain", f"the lake holds {held.describe()}, {rpc.url} serves "
                            f"{node.describe()}: another chain", days[-1])], f"node: {rpc.url}"
    asked: dict[int, str | None] = {}

    def node_hash(i: int) -> str | None:
        if i not in asked:
            (block,) = rpc.batch([("eth_getBlockByNumber", [hex(numbers[i]), False])])
            asked[i] = (block or {}).get("hash", "").lower() or None
        return asked[i]

    def agrees(i: int) -> bool:
        return node_hash(i) == str(hashes[i]).lower()

    newest = len(days) - 1
    if agrees(newest):
        return [], (f"node: {rpc.url} serves the stored chain (its block {numbers[newest]} is the lake's, "
                    f"{days[newest]}; the blocks below are linked to it)")
    lo, hi = 0, newest  # the first disagreeing day is in [lo, hi]: days before lo agree, hi disagrees
    while lo < hi:
        mid = (lo + hi) // 2
        if agrees(mid):
            lo = mid + 1
        else:
            hi = mid
    node = node_hash(hi)
    theirs = f"{node} there" if node else "no such block there (a shorter chain)"
    what = (f"block {numbers[hi]} is {hashes[hi]} in the lake but {theirs}: {rpc.url} serves another history from "
            f"{days[hi]} on (a reorg deeper than rpc.finality_blocks, or another chain with the same genesis)")
    return [Problem("blocks", days[hi], "the stored chain", what, days[-1])], f"node: {rpc.url}, {len(asked)} block(s) asked"


@dataclass(frozen=True)
class Verification:
    problems: list[Problem]
    notes: list[str]  # what could not be checked, and how to make it checkable


def verify_lake(lake, rpc=None) -> Verification:
    """Every committed day of every dataset read back; chain days also checked as one chain, and with
    ``rpc`` against the node (:func:`check_against_node`)."""
    problems: list[Problem] = []
    notes: list[str] = []
    for dataset in SCHEMAS:
        frames, old_days = [], []
        for day in lake.completed_days(dataset, include_unreadable=True):
            found, frame, old = _check_day(lake, dataset, day)
            problems += found
            if old:
                old_days.append(day)
            if dataset == "blocks" and frame is not None:
                frames.append(frame)
        if dataset == "blocks":
            blocks = pl.concat(frames) if frames else pl.DataFrame(schema=SCHEMAS["blocks"])
            problems += _check_blocks(blocks)
            if rpc is not None:
                found, said = check_against_node(blocks, rpc, recorded_chain(lake))
                problems += found
                notes.append(said)
        if old_days:
            later, first, last = _ADDED_LATER[dataset], old_days[0], old_days[-1]
            notes.append(f"{dataset}: {len(old_days)} day(s) between {first} and {last} were written before {later} "
                         f"was recorded, so their block links are not checked; re-ingest with --overwrite to verify: "
                         f"chainsignal {_REPAIR[dataset]} --start {first} --end {last} --overwrite")
    return Verification(problems, notes)
