"""ingest-chain through Prefect against a real local anvil node (synthetic seeded traffic)."""

from datetime import date, timedelta

import polars as pl

from flows.ingest_chain import ingest_chain
from tasks.clients.rpc import HttpJsonRpc
from tasks.storage import Lake

DAYS = (date(2021, 1, 10), date(2021, 1, 13))


def node_truth(url: str, lake: Lake, day: date) -> tuple[int, int, set[str]]:
    rpc = HttpJsonRpc(url, requests_per_second=1000)
    m = lake.manifest("transactions", day)
    blocks = rpc.batch([("eth_getBlockByNumber", [hex(n), True]) for n in range(m["first_block"], m["last_block"] + 1)])
    hashes = {t["hash"] for b in blocks for t in b["transactions"]}
    return m["first_block"], m["last_block"], hashes


def test_ingest_matches_node_and_reruns_skip(seeded_node, data_dir):
    node, _ = seeded_node
    first = ingest_chain(*DAYS, rpc_url=node.url)
    assert first["partitions_done"] == 4 and first["rows_written"] > 0
    lake = Lake(data_dir / "lake")
    txs = lake.scan("transactions").collect()
    for i in range(4):
        day = DAYS[0] + timedelta(days=i)
        lo, hi, hashes = node_truth(node.url, lake, day)
        got = txs.filter(pl.col("block_timestamp").dt.date() == day)
        assert set(got["transaction_hash"]) == hashes  # nothing lost, nothing extra
        assert got["block_number"].min() >= lo and got["block_number"].max() <= hi
    assert txs["transaction_hash"].is_unique().all()
    # Blocks outside the day would put rows on the wrong date: the file's date must match.
    assert (txs["block_timestamp"].dt.date().is_between(*DAYS)).all()
    assert set(txs["transaction_type"]) == {0, 2}  # legacy and EIP-1559 senders
    assert txs["to_address"].null_count() > 0  # contract creations

    again = ingest_chain(*DAYS, rpc_url=node.url)
    assert again["partitions_skipped"] == 4 and again.get("partitions_done", 0) == 0
    assert lake.scan("transactions").collect().height == txs.height  # never appended twice


def test_killed_run_resumes_and_overwrite_rebuilds(seeded_node, data_dir, monkeypatch):
    node, _ = seeded_node
    monkeypatch.setenv("CHAINSIGNAL_RPC__BLOCKS_PER_FILE", "2")  # several chunk files per day
    day = DAYS[0]
    ingest_chain(day, day, rpc_url=node.url)
    lake = Lake(data_dir / "lake")
    part = lake.partition_dir("transactions", day)
    files = sorted(part.glob("*.parquet"))
    assert len(files) >= 2
    before = lake.scan("transactions").collect().sort("transaction_hash")
    # Simulate a kill after the first chunk: the manifests and the later chunks are gone.
    (part / "_manifest.json").unlink()
    (lake.partition_dir("blocks", day) / "_manifest.json").unlink()
    for f in files[1:]:
        f.unlink()
    first_mtime = files[0].stat().st_mtime_ns
    resumed = ingest_chain(day, day, rpc_url=node.url)
    assert resumed["partitions_done"] == 1
    assert files[0].stat().st_mtime_ns == first_mtime  # the finished chunk was not fetched again
    after = lake.scan("transactions").collect().sort("transaction_hash")
    assert after.equals(before)
    rebuilt = ingest_chain(day, day, overwrite=True, rpc_url=node.url)
    assert rebuilt["partitions_done"] == 1
    assert lake.scan("transactions").collect().sort("transaction_hash").equals(before)


def test_day_not_over_on_the_node_is_not_marked_done(seeded_node, data_dir):
    node, _ = seeded_node
    future = date(2021, 6, 1)
    summary = ingest_chain(future, future, rpc_url=node.url)
    assert summary["partitions_not_final"] == 1
    assert not Lake(data_dir / "lake").is_complete("transactions", future)
