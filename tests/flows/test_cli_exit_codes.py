"""Exit codes a user can script, tried on real parts: 0 done; 2 bad input, one `chainsignal: error:` line and
no traceback; 3 stopped early but resumable (a spent quota, a day left open), with one line saying so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.replay import ReplayServer

BIN = Path(sys.executable).parent / "chainsignal"
DAY = "2021-01-10"  # inside the seeded node's window (conftest)
SECRET = "k3y-s3cr3t-0042"


def chainsignal(*args: str, data: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHAINSIGNAL_")}
    base.update(CHAINSIGNAL_STORAGE__DATA_DIR=str(data), CHAINSIGNAL_TWEETS__SOURCES='["file"]',
                CHAINSIGNAL_RPC__REQUESTS_PER_SECOND="1000", CHAINSIGNAL_RPC__BACKOFF_INITIAL_S="0.01", **env)
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=300, env=base, cwd=data.parent)


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("chainsignal: ")]


def test_a_quota_spent_at_the_first_request_exits_3_with_when_to_rerun(seeded_node, tmp_path):
    node, _ = seeded_node
    with ReplayServer(upstream=node.url) as proxy:
        proxy.fault_for = lambda body: "402"  # the quota is gone: every request answers HTTP 402
        out = chainsignal("ingest", "--only", "chain", "--start", DAY, "--end", DAY, "--rpc-url", proxy.url + "/v3/{api_key}",
                          data=tmp_path / "data", CHAINSIGNAL_RPC__API_KEY=SECRET)
    assert out.returncode == 3, out.stderr[-2000:]
    (line,) = error_lines(out)
    assert line.startswith("chainsignal: stopped early, resumable: stopped") and "00:00 UTC" in line
    assert SECRET not in out.stdout + out.stderr and "Traceback" not in out.stderr


def test_an_end_before_the_start_is_one_line_and_exit_2(tmp_path):
    out = chainsignal("ingest", "--only", "prices", "--start", "2021-01-05", "--end", "2021-01-01", data=tmp_path / "data")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert error_lines(out) == ["chainsignal: error: --end 2021-01-01 is before --start 2021-01-05"]


def test_one_source_failing_inside_the_daily_ingest_is_one_line_naming_it(seeded_node, tmp_path):
    """The chain and the tweets still land; prices fail (no candle file): exit 2, one line, their days kept."""
    node, _ = seeded_node
    out = chainsignal("ingest", "--start", DAY, "--end", DAY, "--rpc-url", node.url, data=tmp_path / "data",
                      CHAINSIGNAL_PRICES__FILE_DIR=str(tmp_path / "no-such-dir"))
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = error_lines(out)
    assert line.startswith("chainsignal: error: daily-ingest: prices failed (prices: ") and "prices.file_dir" in line
    assert "Traceback" not in out.stderr
    lake = tmp_path / "data" / "lake"
    assert list((lake / "transactions").rglob("_manifest.json")) and list((lake / "posts").rglob("_manifest.json"))


def test_build_dataset_on_an_empty_lake_is_one_line_and_exit_2(tmp_path):
    out = chainsignal("build-dataset", data=tmp_path / "data")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert error_lines(out) == ["chainsignal: error: no price partitions in the lake: run `chainsignal ingest` first"]
