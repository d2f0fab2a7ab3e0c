"""One polars schema per dataset: the data contracts of the lake.

Columns are snake_case with units in the name; addresses are lowercase hex; times are UTC.
Mappers produce exactly these shapes, :mod:`tasks.core.storage` checks them on write, and scans ask
for them on read, so drift fails loudly.
"""

from __future__ import annotations

import polars as pl

from tasks.core.errors import SchemaError

UTC_TS = pl.Datetime("us", "UTC")
WEI = pl.Decimal(38, 0)  # exact for every real transfer (max ~1.7e38 wei); values above 2^64 exist

BLOCKS = pl.Schema(
    {
        "block_number": pl.Int64,
        "block_hash": pl.String,
        "parent_hash": pl.String,  # the hash of block_number - 1: the stored chain is checked with it
        "block_timestamp": UTC_TS,
        "base_fee_per_gas_wei": pl.Int64,  # null before London
        "gas_used": pl.Int64,
        "gas_limit": pl.Int64,
        "transaction_count": pl.Int32,
        "miner": pl.String,
        "chain_id": pl.Int64,
    }
)

TRANSACTIONS = pl.Schema(
    {
        "block_number": pl.Int64,
        "block_timestamp": UTC_TS,
        "transaction_index": pl.Int32,
        "transaction_hash": pl.String,
        "nonce": pl.Int64,
        "from_address": pl.String,
        "to_address": pl.String,  # null for contract creation
        "value_wei": WEI,
        "value_eth": pl.Float64,
        "gas_limit": pl.Int64,
        "gas_price_wei": pl.Int64,  # effective gas price as the node reports it
        "max_fee_per_gas_wei": pl.Int64,  # null for legacy transactions
        "max_priority_fee_per_gas_wei": pl.Int64,
        "transaction_type": pl.Int32,  # 0 legacy, 1 access list, 2 EIP-1559, 3 blob, 4 set-code
        "input_selector": pl.String,  # first 4 bytes of input as 0x-hex, null when shorter
        "input_bytes": pl.Int32,
        "chain_id": pl.Int64,
    }
)

PRICES = pl.Schema(
    {
        "date": pl.Date,  # UTC candle open day
        "asset": pl.String,  # upper-case ticker
        "open_usd": pl.Float64,
        "high_usd": pl.Float64,
        "low_usd": pl.Float64,
        "close_usd": pl.Float64,
        "volume_base": pl.Float64,  # in units of the asset; not comparable across exchanges
        "source": pl.String,
    }
)

POSTS = pl.Schema(
    {
        "post_id": pl.String,  # unique within source
        "source": pl.String,
        "created_at": UTC_TS,
        "author_id": pl.String,
        "author_username": pl.String,
        "author_followers": pl.Int64,  # null when the source does not say
        "text": pl.String,
        "likes": pl.Int64,
        "reposts": pl.Int64,
        "hashtags": pl.List(pl.String),
        "lang": pl.String,
        "query": pl.String,
    }
)

SENTIMENT = pl.Schema(
    {
        "post_id": pl.String,
        "source": pl.String,
        "created_at": UTC_TS,
        "author_username": pl.String,
        "compound": pl.Float64,  # VADER compound score in [-1, 1]
        "label": pl.String,  # POSITIVE / NEUTRAL / NEGATIVE
    }
)

# One row per transaction receipt (eth_getBlockReceipts, behind rpc.receipts); joins
# transactions on transaction_hash (or block_number + transaction_index).
RECEIPTS = pl.Schema(
    {
        "block_number": pl.Int64,
        "transaction_index": pl.Int32,
        "transaction_hash": pl.String,
        "status": pl.Int8,  # 1 success, 0 reverted; null before Byzantium (state root instead)
        "gas_used": pl.Int64,  # gas units used by this transaction
        "cumulative_gas_used": pl.Int64,  # gas units used in the block up to and including it
        "effective_gas_price_wei": pl.Int64,  # wei per gas unit actually paid
        "fee_wei": WEI,  # gas_used * effective_gas_price_wei (blob fee not included)
        "blob_gas_used": pl.Int64,  # type-3 only
        "blob_gas_price_wei": pl.Int64,  # type-3 only
        "contract_address": pl.String,  # created contract, lowercase hex; null otherwise
        "log_count": pl.Int32,
    }
)

SIGNALS = pl.Schema(
    {
        "date": pl.Date,  # decision day: features known at 00:00 UTC of the next day
        "target_date": pl.Date,  # the day whose move is predicted (date + 1)
        "target_asset": pl.String,
        "label": pl.String,  # POSITIVE / NEUTRAL / NEGATIVE
        "prob_negative": pl.Float64,
        "prob_neutral": pl.Float64,
        "prob_positive": pl.Float64,
        "model_name": pl.String,
        "model_version": pl.String,
        "run_id": pl.String,
        "dataset_fingerprint": pl.String,
        "created_at": UTC_TS,
    }
)

SCHEMAS: dict[str, pl.Schema] = {
    "blocks": BLOCKS,
    "transactions": TRANSACTIONS,
    "receipts": RECEIPTS,
    "prices": PRICES,
    "posts": POSTS,
    "sentiment": SENTIMENT,
    "signals": SIGNALS,
}


def check_schema(df: pl.DataFrame, dataset: str) -> pl.DataFrame:
    """Return ``df`` with columns in contract order, or raise :class:`SchemaError`."""
    expected = SCHEMAS[dataset]
    missing = [c for c in expected if c not in df.columns]
    extra = [c for c in df.columns if c not in expected]
    if missing or extra:
        raise SchemaError(f"{dataset}: missing columns {missing}, unexpected columns {extra}")
    df = df.select(list(expected))
    wrong = [f"{c}: {df.schema[c]} != {t}" for c, t in expected.items() if df.schema[c] != t]
    if wrong:
        raise SchemaError(f"{dataset}: wrong dtypes {wrong}")
    return df
