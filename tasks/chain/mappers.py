"""Raw JSON-RPC block and transaction dicts (hex strings) -> rows of the lake's schemas."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import polars as pl

from tasks.core.schemas import BLOCKS, RECEIPTS, TRANSACTIONS

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


_TX_KEYS = ("blockNumber", "transactionIndex", "hash", "nonce", "from", "to", "value", "gas", "gasPrice",
            "maxFeePerGas", "maxPriorityFeePerGas", "type", "input", "chainId")
_BLOCK_KEYS = ("number", "hash", "parentHash", "timestamp", "baseFeePerGas", "gasUsed", "gasLimit", "miner")
_RECEIPT_KEYS = ("blockNumber", "transactionIndex", "transactionHash", "status", "gasUsed", "cumulativeGasUsed",
                 "effectiveGasPrice", "blobGasUsed", "blobGasPrice", "contractAddress")

# What polars reads straight from a JSON-RPC batch answer (``HttpJsonRpc.batch(columns=...)``): only
# these fields, as strings, no Python object per field. Everything else in the answer is skipped.
_S = pl.String
_ERROR = pl.Struct({"code": pl.Int64, "message": _S})
_RAW_TX = pl.Struct({k: _S for k in _TX_KEYS} | {"data": _S})
BLOCKS_BATCH = pl.Schema({"id": pl.Int64, "error": _ERROR, "result": pl.Struct(
    {k: _S for k in _BLOCK_KEYS} | {"transactions": pl.List(_RAW_TX)})})
RECEIPTS_BATCH = pl.Schema({"id": pl.Int64, "error": _ERROR, "result": pl.List(pl.Struct(
    {k: _S for k in _RECEIPT_KEYS} | {"logs": pl.List(pl.Struct({"logIndex": _S}))}))})


def _hex(name: str, dtype: pl.DataType) -> pl.Expr:
    return pl.col(name).str.slice(2).str.to_integer(base=16, dtype=dtype)


def _strings(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> pl.DataFrame:
    return pl.DataFrame({k: [r.get(k) for r in rows] for k in keys}, schema={k: _S for k in keys})


def _raw_txs(txs: list[dict[str, Any]]) -> pl.DataFrame:
    """Transaction dicts -> raw transactions (strings); ``input`` (or old nodes' ``data``), "0x" if empty."""
    return _strings(txs, _TX_KEYS).with_columns(pl.Series("input", [t.get("input") or t.get("data") or "0x" for t in txs], _S))


def raw_blocks_from_dicts(raw_blocks: list[dict[str, Any]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Block dicts (full transactions) -> (raw blocks, raw transactions): the fields we keep, as strings."""
    txs = []
    for raw in raw_blocks:
        block_txs = raw.get("transactions") or []
        if block_txs and isinstance(block_txs[0], str):
            raise ValueError("blocks must be fetched with full transactions (eth_getBlockByNumber(n, true))")
        txs.extend(block_txs)
    blocks = _strings(raw_blocks, _BLOCK_KEYS).with_columns(
        pl.Series("transaction_count", [len(b.get("transactions") or []) for b in raw_blocks], pl.Int32))
    return blocks, _raw_txs(txs)


def raw_blocks_from_batch(answer: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A batch answer read by polars with ``BLOCKS_BATCH`` -> (raw blocks, raw transactions)."""
    res = answer.select(pl.col("result").struct.unnest())
    blocks = res.select(*_BLOCK_KEYS, pl.col("transactions").list.len().cast(pl.Int32).alias("transaction_count"))
    raw_txs = (res.select("transactions").explode("transactions").drop_nulls("transactions")
               .select(pl.col("transactions").struct.unnest())
               .with_columns(pl.coalesce(pl.col("input").replace("", None), pl.col("data").replace("", None), pl.lit("0x"))
                             .alias("input"))  # as _raw_txs: an empty input is "0x"
               .select(_TX_KEYS))
    return blocks, raw_txs


def raw_receipts_from_dicts(raw_block_receipts: list[list[dict[str, Any]]]) -> pl.DataFrame:
    receipts = [r for block in raw_block_receipts for r in block]
    return _strings(receipts, _RECEIPT_KEYS).with_columns(
        pl.Series("log_count", [len(r.get("logs") or []) for r in receipts], pl.Int32))


def raw_receipts_from_batch(answer: pl.DataFrame) -> pl.DataFrame:
    """A batch answer read by polars with ``RECEIPTS_BATCH`` -> raw receipts (strings)."""
    rows = answer.select(pl.col("result").explode()).drop_nulls("result").select(pl.col("result").struct.unnest())
    return rows.select(*_RECEIPT_KEYS, pl.col("logs").list.len().fill_null(0).cast(pl.Int32).alias("log_count"))


def map_raw_blocks(blocks: pl.DataFrame, txs: pl.DataFrame, chain_id: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(raw blocks, raw transactions) -> the blocks and transactions frames, hex decoded column-wise."""
    out = blocks.select(
        _hex("number", pl.Int64).alias("block_number"),
        pl.col("hash").str.to_lowercase().alias("block_hash"),
        pl.col("parentHash").str.to_lowercase().alias("parent_hash"),
        pl.from_epoch(_hex("timestamp", pl.Int64), "s").cast(BLOCKS["block_timestamp"]).alias("block_timestamp"),
        _hex("baseFeePerGas", pl.Int64).alias("base_fee_per_gas_wei"),
        _hex("gasUsed", pl.Int64).alias("gas_used"),
        _hex("gasLimit", pl.Int64).alias("gas_limit"),
        pl.col("transaction_count"),
        pl.col("miner").str.to_lowercase().alias("miner"),
        pl.lit(chain_id, pl.Int64).alias("chain_id"),
    ).select(list(BLOCKS))
    return out, _map_raw_transactions(txs, out, chain_id)


def map_block_links(blocks: pl.DataFrame) -> pl.DataFrame:
    """Raw blocks -> (block_number, block_hash, parent_hash) in block order: what the hash-chain
    checks at ingest read (the blocks frame stores the parent hash too, for `status --verify`)."""
    return blocks.select(
        _hex("number", pl.Int64).alias("block_number"),
        pl.col("hash").str.to_lowercase().alias("block_hash"),
        pl.col("parentHash").str.to_lowercase().alias("parent_hash"),
    ).sort("block_number")


def _map_raw_transactions(raw: pl.DataFrame, blocks: pl.DataFrame, chain_id: int) -> pl.DataFrame:
    if raw.height == 0:
        return pl.DataFrame(schema=TRANSACTIONS)
    value = _hex("value", pl.Int128)
    out = raw.select(
        _hex("blockNumber", pl.Int64).alias("block_number"),
        _hex("blockNumber", pl.Int64).replace_strict(blocks["block_number"], blocks["block_timestamp"],
                                                     return_dtype=TRANSACTIONS["block_timestamp"]).alias("block_timestamp"),
        _hex("transactionIndex", pl.Int32).alias("transaction_index"),
        pl.col("hash").str.to_lowercase().alias("transaction_hash"),
        _hex("nonce", pl.Int64).alias("nonce"),
        pl.col("from").str.to_lowercase().alias("from_address"),
        pl.col("to").str.to_lowercase().alias("to_address"),
        value.alias("_value"),
        # value_eth in Python: int / int is correctly rounded (a float cast then a division is not)
        pl.Series("value_eth", [int(v, 16) / WEI_PER_ETH for v in raw["value"]], pl.Float64),
        _hex("gas", pl.Int64).alias("gas_limit"),
        _hex("gasPrice", pl.Int64).alias("gas_price_wei"),
        _hex("maxFeePerGas", pl.Int64).alias("max_fee_per_gas_wei"),
        _hex("maxPriorityFeePerGas", pl.Int64).alias("max_priority_fee_per_gas_wei"),
        _hex("type", pl.Int32).fill_null(0).alias("transaction_type"),
        pl.when(pl.col("input").str.len_bytes() >= 10).then(pl.col("input").str.slice(0, 10).str.to_lowercase())
        .alias("input_selector"),
        ((pl.col("input").str.len_bytes() - 2) // 2).cast(pl.Int32).alias("input_bytes"),
        _hex("chainId", pl.Int64).fill_null(chain_id).alias("chain_id"),
    )
    too_big = out.filter(pl.col("_value") > _MAX_DECIMAL_38)
    if too_big.height:
        raise ValueError(f"transaction {too_big['transaction_hash'][0]}: value does not fit Decimal(38,0)")
    return out.with_columns(value_wei=pl.col("_value").cast(TRANSACTIONS["value_wei"])).select(list(TRANSACTIONS))


def map_transactions_frame(txs: list[dict[str, Any]], blocks: pl.DataFrame, chain_id: int) -> pl.DataFrame:
    """Full transaction dicts -> the transactions frame, hex decoded column-wise (same rows as
    :func:`map_transaction`, without a Python call per field)."""
    return _map_raw_transactions(_raw_txs(txs), blocks, chain_id)


def map_blocks_frame(raw_blocks: list[dict[str, Any]], chain_id: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Full-transaction blocks -> (blocks frame, transactions frame), both in contract shape."""
    return map_raw_blocks(*raw_blocks_from_dicts(raw_blocks), chain_id)


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
    """eth_getBlockReceipts results (one list per block) -> the receipts frame, column-wise
    (same rows as :func:`map_receipt`)."""
    return map_raw_receipts(raw_receipts_from_dicts(raw_block_receipts))


def map_raw_receipts(raw: pl.DataFrame) -> pl.DataFrame:
    """Raw receipts (strings, ``log_count``) -> the receipts frame."""
    if raw.height == 0:
        return pl.DataFrame(schema=RECEIPTS)
    gas, price = _hex("gasUsed", pl.Int64), _hex("effectiveGasPrice", pl.Int64)
    return raw.select(
        _hex("blockNumber", pl.Int64).alias("block_number"),
        _hex("transactionIndex", pl.Int32).alias("transaction_index"),
        pl.col("transactionHash").str.to_lowercase().alias("transaction_hash"),
        _hex("status", pl.Int8).alias("status"),
        gas.alias("gas_used"),
        _hex("cumulativeGasUsed", pl.Int64).alias("cumulative_gas_used"),
        price.alias("effective_gas_price_wei"),
        (gas.cast(pl.Int128) * price.cast(pl.Int128)).cast(RECEIPTS["fee_wei"]).alias("fee_wei"),
        _hex("blobGasUsed", pl.Int64).alias("blob_gas_used"),
        _hex("blobGasPrice", pl.Int64).alias("blob_gas_price_wei"),
        pl.col("contractAddress").str.to_lowercase().alias("contract_address"),
        pl.col("log_count"),
    )
