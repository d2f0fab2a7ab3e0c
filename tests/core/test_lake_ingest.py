"""A truncated `_manifest.json` through the real ingests: the day is written again by the next run, the
other days are skipped, and nothing fails (the chain against the session's anvil node, prices from the
bundled candles, and once through the `chainsignal` command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from flows.ingest_chain import ingest_chain
from flows.ingest_prices import ingest_prices
from tasks.core.storage import Lake

BIN = Path(sys.executable).parent / "chainsignal"
DAYS = (date(2021, 1, 4), date(2021, 1, 6))


def truncate(manifest: Path) -> None:
    manifest.write_text(manifest.read_text()[:20])


def statuses(summary_reports: list[dict]) -> dict[str, str]:
    return {r["day"]: r["status"] for r in summary_reports}


def test_the_chain_ingest_recommits_a_day_whose_manifest_was_truncated(seeded_node, data_dir):
    node, _ = seeded_node
    ingest_chain(*DAYS, rpc_url=node.url)
    lake = Lake(data_dir / "lake")
    before = lake.scan("transactions").collect().sort("transaction_hash")
    manifest = lake.partition_dir("transactions", DAYS[0] + timedelta(days=1)) / "_manifest.json"
    good = json.loads(manifest.read_text())
    truncate(manifest)
    again = ingest_chain(*DAYS, rpc_url=node.url)  # used to fail (JSONDecodeError) after two retries
    assert again["partitions_skipped"] == 2 and again["partitions_done"] == 1, again
    assert again["blocks_fetched"] == 0  # its chunks were in the lake: only the manifests were written again
    assert {k: v for k, v in json.loads(manifest.read_text()).items() if k != "written_at"} == \
        {k: v for k, v in good.items() if k != "written_at"}
    assert lake.scan("transactions").collect().sort("transaction_hash").equals(before)


def test_the_prices_ingest_rewrites_a_truncated_manifest_and_skips_the_other_days(data_dir):
    first = ingest_prices(*DAYS)
    assert first["partitions_done"] == 3
    lake = Lake(data_dir / "lake")
    before = lake.scan("prices").collect()
    manifest = lake.partition_dir("prices", DAYS[0] + timedelta(days=1)) / "_manifest.json"
    truncate(manifest)
    assert lake.scan("prices").collect().height == before.height - 2  # build-dataset would not see the day
    again = ingest_prices(*DAYS)  # used to skip the day, its manifest left unreadable for good
    assert again["partitions_done"] == 1 and again["partitions_skipped"] == 2, again
    assert json.loads(manifest.read_text())["rows"] == 2
    assert lake.scan("prices").collect().sort("date", "asset").equals(before.sort("date", "asset"))


def test_the_command_warns_once_naming_the_manifest_and_exits_0(tmp_path, data_dir):
    from prefect.settings import PREFECT_API_URL

    ingest_prices(*DAYS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINSIGNAL_")}
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), CHAINSIGNAL_STORAGE__DATA_DIR=str(data_dir))
    command = [str(BIN), "ingest", "--only", "prices", "--start", str(DAYS[0]), "--end", str(DAYS[1])]
    lake = Lake(data_dir / "lake")
    manifest = lake.partition_dir("prices", DAYS[1]) / "_manifest.json"
    truncate(manifest)
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    warned = [line for line in (out.stdout + out.stderr).splitlines() if "unreadable manifest" in line]
    assert len(warned) == 1 and str(manifest) in warned[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert lake.completed_days("prices") == [DAYS[0], DAYS[0] + timedelta(days=1), DAYS[1]]
    assert lake.scan("prices").collect().filter(pl.col("date") == DAYS[1]).height == 2
