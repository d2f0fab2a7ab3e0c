"""CPU smoke runs of the bench/ scripts: the script in a subprocess, its exit status checked, its JSON
report read back. Tests assert on what the report says; no timing is ever asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
TINY_LLAMA = ("--device", "cpu", "--hidden", "64", "--layers", "2", "--heads", "4")  # the scripts' smoke shape


def run_bench_script(name: str, *args: str, report: Path | None = None, timeout: int = 170) -> tuple[dict, str]:
    """Run ``bench/<name>`` with ``args``; fail with its output's tail unless it exits 0. Returns the
    JSON ``report`` it wrote (empty when none is named) and its standard output."""
    proc = subprocess.run([sys.executable, str(BENCH_DIR / name), *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return (json.loads(report.read_text()) if report is not None else {}), proc.stdout
