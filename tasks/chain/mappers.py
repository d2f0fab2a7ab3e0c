"""Raw JSON-RPC block and transaction dicts (hex strings) -> rows of the lake's schemas."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import polars as pl

from tasks.schemas import BLOCKS, RECEIPTS, TRANSACTIONS

WEI_PER_ETH = 10**18
_MAX_DECIMAL_38 = 10**38 - 1


def _int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    return int(value, 16)


def _addr(value: str | None) -> str | None:
    return value.lower() if value else None


def _ts(value: Any) -> datetime:
    return datetime.fromtimestamp(_int(value), tz=timezone.utc)


def map_block(raw: dict[str, Any], chain_id: int) -> dict[str, Any]:
    txs = raw.get("transactions") or []
    return {
        "block_number": _int(raw["number"]),
        "block_hash": raw["hash"].lower(),
        "block_timestamp": _ts(raw["timestamp"]),
        "base_fee_per_gas_wei": _int(raw.get("baseFeePerGas")),
        "gas_used": _int(raw["gasUsed"]),
        "gas_limit": _int(raw["gasLimit"]),
        "transaction_count": len(txs),
        "miner": _addr(raw.get("miner")),
        "chain_id": chain_id,
    }


def map_transaction(raw: dict[str, Any], block_timestamp: datetime, chain_id: int) -> dict[str, Any]:
    value = _int(raw["value"])
    if value > _MAX_DECIMAL_38:
        raise ValueError(f"transaction {raw['hash']}: value {value} wei does not fit Decimal(38,0)")
    data = raw.get("input") or raw.get("data") or "0x"
    n_bytes = (len(data) - 2) // 2
    return {
        "block_number": _int(raw["blockNumber"]),
        "block_timestamp": block_timestamp,
        "transaction_index": _int(raw["transactionIndex"]),
        "transaction_hash": raw["hash"].lower(),
        "nonce": _int(raw["nonce"]),
        "from_address": _addr(raw["from"]),
        "to_address": _addr(raw.get("to")),
        "value_wei": Decimal(value),
        "value_eth": value / WEI_PER_ETH,
        "gas_limit": _int(raw["gas"]),
        "gas_price_wei": _int(raw.get("gasPrice")),
        "max_fee_per_gas_wei": _int(raw.get("maxFeePerGas")),
        "max_priority_fee_per_gas_wei": _int(raw.get("maxPriorityFeePerGas")),
        "transaction_type": _int(raw.get("type")) or 0,
        "input_selector": data[:10].lower() if n_bytes >= 4 else None,
        "input_bytes": n_bytes,
        "chain_id": _int(raw.get("chainId")) if raw.get("chainId") else chain_id,
    }


def map_blocks_frame(raw_blocks: list[dict[str, Any]], chain_id: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Full-transaction blocks -> (blocks frame, transactions frame), both in contract shape."""
    blocks, txs = [], []
    for raw in raw_blocks:
        block = map_block(raw, chain_id)
        blocks.append(block)
        for tx in raw.get("transactions") or []:
            if isinstance(tx, str):
                raise ValueError("blocks must be fetched with full transactions (eth_getBlockByNumber(n, true))")
            txs.append(map_transaction(tx, block["block_timestamp"], chain_id))
    return pl.DataFrame(blocks, schema=BLOCKS), pl.DataFrame(txs, schema=TRANSACTIONS)


def map_receipt(raw: dict[str, Any]) -> dict[str, Any]:
    gas_used, price = _int(raw["gasUsed"]), _int(raw.get("effectiveGasPrice"))
    return {
        "block_number": _int(raw["blockNumber"]),
        "transaction_index": _int(raw["transactionIndex"]),
        "transaction_hash": raw["transactionHash"].lower(),
        "status": _int(raw.get("status")),
        "gas_used": gas_used,
        "cumulative_gas_used": _int(raw["cumulativeGasUsed"]),
        "effective_gas_price_wei": price,
        "fee_wei": Decimal(gas_used * price) if price is not None else None,
        "blob_gas_used": _int(raw.get("blobGasUsed")),
        "blob_gas_price_wei": _int(raw.get("blobGasPrice")),
        "contract_address": _addr(raw.get("contractAddress")),
        "log_count": len(raw.get("logs") or []),
    }


def map_receipts_frame(raw_block_receipts: list[list[dict[str, Any]]]) -> pl.DataFrame:
    """eth_getBlockReceipts results (one list per block) -> the receipts frame."""
    rows = [map_receipt(r) for block in raw_block_receipts for r in block]
    return pl.DataFrame(rows, schema=RECEIPTS)
