"""A day's plan: its block range and chunking, recorded before its first chunk is written.

The chunking of a day is part of its identity. Without a plan, a day stopped mid-way with
``rpc.blocks_per_file=25`` and resumed with 1000 was committed with both the 25-block chunks and
the 1000-block file (every block of the overlap twice): a commit took every file in the folder.
Now the plan (``_meta/day_plans/<chain>/<day>.json``: range, blocks per file, the file names) is
written first; a resume finishes the recorded plan when its range still holds (the chunks already
fetched are kept, whatever ``blocks_per_file`` says now), else the plan is replaced and the old
plan's chunks are discarded; files that no plan lists are removed before anything is fetched; and
the commit lists exactly the plan's files after checking that their blocks are each held once,
contiguous over the day's range.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from tasks.chain.blockrange import DayBlocks, block_chunks
from tasks.chain.identity import ChainIdentity
from tasks.core.errors import DataError
from tasks.core.storage import Lake, LakeMeta, Partition, block_chunk_name


@dataclass(frozen=True)
class DayPlan:
    day: date
    first_block: int
    last_block: int  # < first_block for a day without blocks
    blocks_per_file: int
    chain: str  # name in the file names
    chain_id: int
    genesis_hash: str

    @property
    def chunks(self) -> list[tuple[int, int]]:
        return block_chunks(self.first_block, self.last_block, self.blocks_per_file)

    @property
    def n_blocks(self) -> int:
        return max(0, self.last_block - self.first_block + 1)

    def files(self, dataset: str) -> list[str]:
        return [block_chunk_name(self.chain, dataset, a, b) for a, b in self.chunks]

    def same_blocks(self, other: DayPlan) -> bool:
        """The same blocks of the same chain (the chunking may differ)."""
        return (self.day, self.first_block, self.last_block, self.chain, self.chain_id, self.genesis_hash) == (
            other.day, other.first_block, other.last_block, other.chain, other.chain_id, other.genesis_hash)

    def as_doc(self, datasets: tuple[str, ...]) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "first_block": self.first_block, "last_block": self.last_block,
                "blocks_per_file": self.blocks_per_file, "chain": self.chain, "chain_id": self.chain_id,
                "genesis_hash": self.genesis_hash, "files": {d: self.files(d) for d in datasets}}

    @classmethod
    def from_doc(cls, doc: Any) -> DayPlan | None:
        """The plan of a stored document; None when there is none or it is unreadable (then the
        day is planned afresh and every file of the folder that the new plan does not list goes)."""
        try:
            return cls(date.fromisoformat(doc["day"]), int(doc["first_block"]), int(doc["last_block"]),
                       int(doc["blocks_per_file"]), str(doc["chain"]), int(doc["chain_id"]), str(doc["genesis_hash"]))
        except (TypeError, KeyError, ValueError):
            return None


def plan_doc(lake: Lake, chain: str, day: date) -> LakeMeta:
    return lake.meta(f"day_plans/{chain}/{day.isoformat()}.json")


def current_plan(lake: Lake, rng: DayBlocks, chain: str, blocks_per_file: int, node: ChainIdentity,
                 overwrite: bool = False) -> tuple[DayPlan, DayPlan | None]:
    """(the plan to follow, the recorded plan). The recorded plan is finished when it covers the same
    blocks of the same chain; otherwise (or with ``overwrite``) the day is planned from the settings.
    Reads only: the planner thread of a stream asks this too."""
    fresh = DayPlan(rng.day, rng.first_block, rng.last_block, blocks_per_file, chain, node.chain_id, node.genesis_hash)
    recorded = DayPlan.from_doc(plan_doc(lake, chain, rng.day).load())
    if not overwrite and recorded is not None and recorded.same_blocks(fresh):
        return recorded, recorded
    return fresh, recorded


def save_plan(lake: Lake, plan: DayPlan, datasets: tuple[str, ...]) -> None:
    plan_doc(lake, plan.chain, plan.day).save(plan.as_doc(datasets))


def discard_files(parts: dict[str, Partition], keep: DayPlan | None) -> int:
    """Remove the day's chunk files that ``keep`` does not list (all of them when None); how many went."""
    gone = 0
    for dataset, part in parts.items():
        listed = set(keep.files(dataset)) if keep is not None else set()
        stale = [str(p) for p in part.files() if str(p).rsplit("/", 1)[-1] not in listed]
        for path in stale:
            part.lake.fs.rm(path)
        gone += len(stale)
    return gone


def check_day_files(parts: dict[str, Partition], plan: DayPlan) -> tuple[int, int]:
    """(blocks, transactions) in the plan's files, once checked: each block of the day's range held
    exactly once, and as many transactions, all inside the range, as the blocks say they hold.
    Reads two small columns of the blocks and one of the transactions (no hashing of a day's rows)."""
    day, first, last = plan.day, plan.first_block, plan.last_block
    blocks = parts["blocks"].scan(plan.files("blocks")).select("block_number", "transaction_count").collect()
    numbers = blocks["block_number"].sort()
    where = f"{day}: the plan's files ({first}..{last}, {plan.blocks_per_file} blocks per file)"
    repair = f"nothing was committed: run chainsignal ingest --only chain --start {day} --end {day} --overwrite"
    if numbers.is_duplicated().any():
        raise DataError(f"{where} hold block {numbers.filter(numbers.is_duplicated())[0]} more than once; {repair}")
    if not numbers.equals(pl.int_range(first, last + 1, eager=True, dtype=numbers.dtype), check_names=False):
        raise DataError(f"{where} hold {numbers.len()} blocks, not the {plan.n_blocks} of the range; {repair}")
    txs = parts["transactions"].scan(plan.files("transactions")).select(
        pl.len().alias("rows"), pl.col("block_number").min().alias("lo"), pl.col("block_number").max().alias("hi")).collect().row(0)
    held = int(blocks["transaction_count"].sum())
    if txs[0] != held or (txs[0] and (txs[1] < first or txs[2] > last)):
        raise DataError(f"{where} hold {txs[0]} transactions in blocks {txs[1]}..{txs[2]}, where the blocks "
                        f"hold {held}; {repair}")
    return numbers.len(), txs[0]
