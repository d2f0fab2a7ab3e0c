"""Modern block, transaction and receipt shapes (London to Prague: blob and set-code txs, block
receipts, error responses), from the execution-apis transcripts recorded from geth, served by the
replay server to the real client and mapped into the lake's schemas."""

from datetime import UTC, datetime

import polars as pl
import pytest

from tasks.chain.mappers import map_receipt, map_receipts_frame, map_transaction, map_transactions_frame
from tasks.chain.stream import fetch_block_receipts
from tasks.clients.rpc import HttpJsonRpc
from tasks.core.errors import RpcError
from tasks.core.schemas import RECEIPTS, TRANSACTIONS
from tests.conftest import TESTS
from tests.replay import ReplayServer, read_transcript

APIS = TESTS / "data" / "rpc" / "execution-apis"
TS = datetime(2024, 1, 1, tzinfo=UTC)


def recorded(path: str):
    return read_transcript(APIS / path)[0][1]["result"]


@pytest.fixture
def replay():
    with ReplayServer(APIS) as server:
        yield server


def client(url: str) -> HttpJsonRpc:
    return HttpJsonRpc(url, requests_per_second=500, timeout_s=0.5, max_retries=2, backoff_initial_s=0.01,
                       backoff_max_s=0.02, method_credits={"eth_getBlockReceipts": 1000})


@pytest.mark.parametrize(
    "case, tx_type, to_null, selector",
    [
        ("get-legacy-create.io", 0, True, "0x600d3803"),
        ("get-access-list.io", 1, False, "0x0e394e7c"),
        ("get-dynamic-fee.io", 2, False, "0x1ee8f6de"),
        ("get-blob-tx.io", 3, False, "0x29db6825"),
        ("get-setcode-tx.io", 4, False, None),  # empty input
    ],
)
def test_every_transaction_type_maps_to_the_schema(case, tx_type, to_null, selector):
    raw = recorded(f"eth_getTransactionByHash/{case}")
    row = map_transaction(raw, TS, chain_id=1)
    df = pl.DataFrame([row], schema=TRANSACTIONS)
    assert df["transaction_type"][0] == tx_type
    assert (df["to_address"][0] is None) == to_null
    assert df["input_selector"][0] == selector
    assert df["input_bytes"][0] == (len(raw["input"]) - 2) // 2
    assert df["transaction_hash"][0] == raw["hash"] and df["value_wei"][0] == int(raw["value"], 16)
    assert df["chain_id"][0] == int(raw["chainId"], 16) if raw.get("chainId") else 1
    if tx_type >= 2:
        assert df["max_fee_per_gas_wei"][0] == int(raw["maxFeePerGas"], 16)
        assert df["max_priority_fee_per_gas_wei"][0] == int(raw["maxPriorityFeePerGas"], 16)


def test_block_receipts_through_the_client_map_to_the_schema(replay):
    (receipts,) = fetch_block_receipts(client(replay.url), 1, 1, blocks_per_batch=10)
    df = map_receipts_frame([receipts])
    assert df.schema == RECEIPTS and df.height == len(receipts) > 0
    assert df["gas_used"].to_list() == [int(r["gasUsed"], 16) for r in receipts]
    assert df["transaction_hash"].to_list() == [r["transactionHash"] for r in receipts]
    # contract creations: the created address kept, lowercase
    assert df["contract_address"].to_list() == [r["contractAddress"] for r in receipts]
    fees = df.select((pl.col("gas_used") * pl.col("effective_gas_price_wei")).cast(pl.Decimal(38, 0)) == pl.col("fee_wei"))
    assert fees.to_series().all()


def test_blob_and_setcode_receipts_keep_their_fields():
    blob = map_receipts_frame([[recorded("eth_getTransactionReceipt/get-blob-tx.io")]])
    assert blob["blob_gas_used"][0] == 0x20000 and blob["blob_gas_price_wei"][0] == 1
    assert blob["status"][0] == 1 and blob["log_count"][0] == 1
    setcode = map_receipts_frame([[recorded("eth_getTransactionReceipt/get-setcode-tx.io")]])
    assert setcode["blob_gas_used"][0] is None and setcode["status"][0] in (0, 1)


def test_empty_block_has_no_receipts(replay):
    assert fetch_block_receipts(client(replay.url), 0, 0, blocks_per_batch=1) == [[]]


def test_receipts_of_a_block_not_there_yet_are_retried_then_fail(replay):
    with pytest.raises(RpcError) as err:  # the recorded answer for block 0x37 is null
        fetch_block_receipts(client(replay.url), 0x37, 0x37, blocks_per_batch=1)
    assert "null result" in str(err.value) and "\n" not in str(err.value)
    assert len(replay.requests) == 3  # first try + 2 retries


def test_recorded_error_response_is_one_line_and_not_retried(replay):
    rpc = client(replay.url)
    with pytest.raises(RpcError) as err:
        rpc.call("eth_getLogs", [{"fromBlock": "0x32", "toBlock": "0x2f"}])
    assert "-32602" in str(err.value) and "invalid block range" in str(err.value)
    assert len(replay.requests) == 1


def test_columnar_mappers_equal_the_row_mappers():
    txs = [read_transcript(f)[0][1]["result"] for f in sorted((APIS / "eth_getTransactionByHash").glob("*.io"))]
    numbers = sorted({int(t["blockNumber"], 16) for t in txs})
    blocks = pl.DataFrame({"block_number": numbers, "block_timestamp": [TS] * len(numbers)},
                          schema={"block_number": pl.Int64, "block_timestamp": TRANSACTIONS["block_timestamp"]})
    rows = pl.DataFrame([map_transaction(t, TS, chain_id=1) for t in txs], schema=TRANSACTIONS)
    assert map_transactions_frame(txs, blocks, chain_id=1).equals(rows)
    receipts = [recorded("eth_getBlockReceipts/get-block-receipts-n.io"),
                [recorded("eth_getTransactionReceipt/get-blob-tx.io")], [recorded("eth_getTransactionReceipt/get-setcode-tx.io")]]
    rows = pl.DataFrame([map_receipt(r) for block in receipts for r in block], schema=RECEIPTS)
    assert map_receipts_frame(receipts).equals(rows)
