"""Prefect's temporary server does not outlive a killed command: a real `chainsignal ingest` (no server
up, so Prefect starts its temporary one), killed with SIGKILL, leaves its server running; the next
command stops it, and touches no server whose command still runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.ops.services import SERVER_OWNER_ENV, _started, orphaned_temporary_servers

BIN = Path(sys.executable).parent / "chainsignal"

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="reads /proc (Linux)")


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAINSIGNAL_", "PREFECT_API_URL", SERVER_OWNER_ENV))}
    env.update({"CHAINSIGNAL_STORAGE__DATA_DIR": str(tmp_path / "data"), "PREFECT_HOME": str(tmp_path / "prefect"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    return env


def server_of(owner: int, timeout_s: float = 90.0) -> int:
    """The pid of the temporary server that process ``owner`` started, as soon as it exists."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if (b"prefect.server.api.server:create_app" in (entry / "cmdline").read_bytes()
                        and f"{SERVER_OWNER_ENV}={owner}:".encode() in (entry / "environ").read_bytes()):
                    return int(entry.name)
            except OSError:
                continue
        time.sleep(0.1)
    raise AssertionError(f"no temporary server started by pid {owner} within {timeout_s} s")


def test_a_killed_command_leaves_no_temporary_server_behind(tmp_path):
    env = cli_env(tmp_path)
    cmd = [str(BIN), "ingest", "--only", "prices", "--start", "2021-01-01", "--end", "2021-01-02"]
    killed = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        server = server_of(killed.pid)
        assert server not in orphaned_temporary_servers()  # its command runs: not an orphan
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        assert _started(server) is not None  # the orphan: what every kill -9 left behind before
        assert server in orphaned_temporary_servers()
        nxt = subprocess.run([str(BIN), "--help"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert nxt.returncode == 0, nxt.stderr[-2000:]
        assert _started(server) is None, "the next command did not stop the orphaned temporary server"
        assert server not in orphaned_temporary_servers()
    finally:
        if killed.poll() is None:
            killed.kill()
        if server is not None and _started(server) is not None:
            os.kill(server, signal.SIGKILL)
