"""Which chain the lake holds, and whether the node's blocks continue it.

A lake holds one chain: its chain id and genesis (block 0) hash are recorded in the lake's
metadata (``_meta/chain.json``) on first write, and a node that serves another chain is refused
in one line naming both, before anything is written. The chain id alone does not tell two chains
apart (every local dev chain is 31337, a fork keeps mainnet's id), the genesis hash does; and a
chain that shares its genesis but forked later (a reorg deeper than ``finality_blocks``, a node
swapped for another one) is caught by the hash chain: every block's parent hash must be the hash
of the block before it, inside a chunk, across chunks and across days (:func:`first_broken_link`).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from tasks.core.errors import ChainMismatchError
from tasks.core.storage import Lake

IDENTITY_DOC = "chain.json"  # <lake>/_meta/chain.json


@dataclass(frozen=True)
class ChainIdentity:
    chain_id: int
    genesis_hash: str  # block 0's hash, lowercase 0x-hex

    @property
    def key(self) -> str:
        """What cached chain facts (the day block ranges) are keyed by."""
        return f"{self.chain_id}:{self.genesis_hash}"

    def describe(self) -> str:
        return f"chain id {self.chain_id} (genesis {self.genesis_hash})"


def recorded_chain(lake: Lake) -> ChainIdentity | None:
    """The chain the lake holds, as recorded on its first write (None: nothing recorded yet)."""
    doc = lake.meta(IDENTITY_DOC).load()
    if not isinstance(doc, dict) or "chain_id" not in doc or "genesis_hash" not in doc:
        return None
    return ChainIdentity(int(doc["chain_id"]), str(doc["genesis_hash"]))


def _legacy_chain_id(lake: Lake) -> int | None:
    """The chain id in the newest blocks manifest of a lake filled before identities were recorded."""
    days = lake.completed_days("blocks")
    manifest = lake.manifest("blocks", days[-1]) if days else None
    return int(manifest["chain_id"]) if manifest and manifest.get("chain_id") is not None else None


def check_lake_chain(lake: Lake, node: ChainIdentity, endpoint: str) -> None:
    """Refuse, in one line naming both chains, a node that serves another chain than the lake holds."""
    held = recorded_chain(lake)
    if held is None:
        legacy = _legacy_chain_id(lake)
        if legacy is None or legacy == node.chain_id:
            return
        what = f"chain id {legacy} (its blocks manifests)"
    elif held == node:
        return
    else:
        what = held.describe()
    raise ChainMismatchError(f"the lake at {lake.root} holds {what}, but {endpoint} serves {node.describe()}: "
                             "point rpc.url at the lake's chain, or storage.data_dir (or storage.lake_uri) at another lake")


def record_lake_chain(lake: Lake, node: ChainIdentity, chain: str, endpoint: str) -> None:
    """On the lake's first write: record which chain it holds (and refuse another one)."""
    check_lake_chain(lake, node, endpoint)
    if recorded_chain(lake) is None:
        lake.meta(IDENTITY_DOC).save({"chain": chain, "chain_id": node.chain_id, "genesis_hash": node.genesis_hash})


def first_broken_link(links: pl.DataFrame, first: int, last: int, previous_hash: str | None) -> tuple[int, str] | None:
    """The first of blocks ``first..last`` that does not continue the chain, and why; None when they all do.

    ``links``: (block_number, block_hash, parent_hash) as the node sent them (``Chunk.links``);
    ``previous_hash``: the hash of block ``first - 1`` as the lake holds it (None: not held, the
    first block is not checked). Vectorised: one pass of polars expressions over the chunk."""
    n = last - first + 1
    numbers = links["block_number"]
    if links.height != n or not numbers.equals(pl.int_range(first, last + 1, eager=True, dtype=numbers.dtype),
                                                check_names=False):
        return first, f"the node answered {links.height} blocks {numbers.min()}..{numbers.max()} for {first}..{last}"
    expected = pl.col("block_hash").shift(1, fill_value=pl.lit(previous_hash, pl.String))
    broken = links.filter(expected.is_not_null() & (pl.col("parent_hash") != expected))
    if broken.is_empty():
        return None
    number = broken["block_number"][0]
    return number, f"block {number}'s parent hash {broken['parent_hash'][0]} is not the hash of block {number - 1}"
