"""Mappers against real recorded mainnet blocks, with ethereum-etl's expected rows as the oracle."""

import json
from decimal import Decimal

import polars as pl
import pytest

from tasks.chain.mappers import map_blocks_frame
from tasks.core.schemas import BLOCKS, TRANSACTIONS
from tests.conftest import RPC_DATA


def load_case(case: str):
    raw = [json.loads(p.read_text())["result"] for p in sorted((RPC_DATA / case).glob("web3_response.*.json"))]
    tx_csv = RPC_DATA / case / "expected_transactions.csv"
    expected_tx = pl.read_csv(tx_csv, infer_schema_length=0) if tx_csv.stat().st_size else pl.DataFrame()
    expected_blocks = pl.read_csv(RPC_DATA / case / "expected_blocks.csv", infer_schema_length=0)
    return raw, expected_tx, expected_blocks


@pytest.mark.parametrize("case", ["blocks_with_transactions", "block_with_logs", "block_without_transactions"])
def test_mapped_rows_match_ethereum_etl(case):
    raw, expected_tx, expected_blocks = load_case(case)
    blocks, txs = map_blocks_frame(raw, chain_id=1)
    assert blocks.schema == BLOCKS and txs.schema == TRANSACTIONS
    assert blocks.height == expected_blocks.height
    assert blocks["block_number"].to_list() == [int(x) for x in expected_blocks["number"]]
    assert blocks["transaction_count"].to_list() == [int(x) for x in expected_blocks["transaction_count"]]
    assert blocks["gas_used"].to_list() == [int(x) for x in expected_blocks["gas_used"]]
    assert blocks["gas_limit"].to_list() == [int(x) for x in expected_blocks["gas_limit"]]
    assert blocks["block_hash"].to_list() == expected_blocks["hash"].to_list()
    assert blocks["parent_hash"].to_list() == expected_blocks["parent_hash"].to_list()  # stored for status --verify
    assert blocks["miner"].to_list() == expected_blocks["miner"].to_list()
    assert blocks["block_timestamp"].dt.epoch("s").to_list() == [int(x) for x in expected_blocks["timestamp"]]
    assert blocks["base_fee_per_gas_wei"].to_list() == [int(x) if x else None for x in expected_blocks["base_fee_per_gas"]]
    assert txs.height == expected_tx.height
    if txs.height == 0:
        return
    assert txs["transaction_hash"].to_list() == expected_tx["hash"].to_list()
    assert txs["from_address"].to_list() == expected_tx["from_address"].to_list()
    assert txs["to_address"].to_list() == [x or None for x in expected_tx["to_address"].to_list()]
    assert txs["value_wei"].to_list() == [Decimal(x) for x in expected_tx["value"]]
    assert txs["value_eth"].to_list() == pytest.approx([int(x) / 10**18 for x in expected_tx["value"]], rel=1e-15)
    assert txs["transaction_index"].to_list() == [int(x) for x in expected_tx["transaction_index"]]
    assert txs["gas_limit"].to_list() == [int(x) for x in expected_tx["gas"]]
    assert txs["gas_price_wei"].to_list() == [int(x) for x in expected_tx["gas_price"]]
    assert txs["nonce"].to_list() == [int(x) for x in expected_tx["nonce"]]
    assert txs["block_timestamp"].dt.epoch("s").to_list() == [int(x) for x in expected_tx["block_timestamp"]]
    selectors = [x[:10] if len(x) >= 10 else None for x in expected_tx["input"]]
    assert txs["input_selector"].to_list() == selectors
    assert txs["input_bytes"].to_list() == [(len(x) - 2) // 2 for x in expected_tx["input"]]
    assert txs["transaction_type"].to_list() == [int(x) for x in expected_tx["transaction_type"]]


def test_hash_only_blocks_are_refused():
    raw, _, _ = load_case("blocks_with_transactions")
    raw = [{**b, "transactions": [t["hash"] for t in b["transactions"]]} for b in raw]
    with pytest.raises(ValueError, match="full transactions"):
        map_blocks_frame(raw, chain_id=1)
