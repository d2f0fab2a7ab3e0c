"""The deployed product on real processes: `chainsignal up` (Prefect server, MLflow server, a
process worker), `chainsignal setup` (pools + deployments from deployments/prefect.yaml), then
`prefect deployment run train-lora/train-lora`, the run found in the MLflow server, and
`chainsignal down`. Loopback ports only."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from flows.build_dataset import build_dataset
from tasks.chain.localnode import free_port
from tests.browser import browser, rendered_text

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def sh(*cmd: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd[:3]} failed: {out.stdout[-1500:]} {out.stderr[-1500:]}"
    return out


def test_up_setup_deployment_run_down(lake_copy, data_dir):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import SyncPrefectClient

    build_dataset()
    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ,
           "CHAINSIGNAL_STORAGE__DATA_DIR": str(data_dir),
           "CHAINSIGNAL_SERVICES__PREFECT_PORT": str(prefect_port),
           "CHAINSIGNAL_SERVICES__MLFLOW_PORT": str(mlflow_port),
           "CHAINSIGNAL_SERVICES__WORKER_POOLS": '["gpu"]',
           "CHAINSIGNAL_SERVICES__WORKER_QUERY_SECONDS": "1",
           "CHAINSIGNAL_SERVICES__PREFECT_DATABASE": "sqlite"}  # PostgreSQL is covered by the test below
    # as a user would: no tracking URI exported; the run must show in the MLflow UI that `up` prints
    env.pop("PREFECT_API_URL", None)
    api = f"http://127.0.0.1:{prefect_port}/api"
    try:
        up = json.loads(sh(str(BIN / "chainsignal"), "up", env=env, timeout=240).stdout)
        assert up["export"] == {"PREFECT_API_URL": api} and up["mlflow_ui"] == f"http://127.0.0.1:{mlflow_port}"
        # the Prefect UI asks the API on the configured port, not 4200
        ui = requests.get(f"http://127.0.0.1:{prefect_port}/ui-settings", timeout=10).json()
        assert ui["api_url"] == api
        # a CLI command in a fresh shell (nothing exported) runs against up's server: no temporary one
        ingest = sh(str(BIN / "chainsignal"), "ingest", "--only", "prices", "--start", "2021-01-01", "--end", "2021-01-02",
                    env=env, timeout=240)
        assert "Starting temporary server" not in ingest.stderr and f"127.0.0.1:{prefect_port}" in ingest.stderr
        env["PREFECT_API_URL"] = api
        # the setup command also creates the chain's shared credit limit (the workers here do not use it)
        setup = sh(str(BIN / "chainsignal"), "setup", timeout=240, env={
            **env, "CHAINSIGNAL_RPC__CONCURRENCY_LIMIT": "chain-credits", "CHAINSIGNAL_RPC__CREDITS_PER_SECOND": "500"})
        assert "train-lora/train-lora" in setup.stdout and "daily/daily" in setup.stdout
        run = sh(str(BIN / "prefect"), "deployment", "run", "train-lora/train-lora", "-p", "epochs=1", "-p", "batch_size=16",
                 "-p", "micro_batch_size=16", "--watch", "--watch-timeout", "400", env=env, timeout=450)
        assert "Completed" in run.stdout

        client = MlflowClient(up["mlflow_ui"])
        exp = client.get_experiment_by_name("chainsignal")
        runs = client.search_runs([exp.experiment_id], "tags.model_kind = 'lora'")
        assert len(runs) == 1
        metrics = runs[0].data.metrics
        assert {"test_macro_f1", "test_mcc", "train_loss"} <= set(metrics)
        baselines = client.search_runs([exp.experiment_id], "tags.model_kind = 'baseline'")
        assert {"majority", "persistence"} <= {r.data.tags["baseline"] for r in baselines}
        adapter = {a.path for a in client.list_artifacts(runs[0].info.run_id, "adapter")}
        assert "adapter/adapter_config.json" in adapter and "adapter/adapter_model.safetensors" in adapter

        with SyncPrefectClient(api) as pc:
            daily = pc.read_deployment_by_name("daily/daily")
            cron = [s.schedule.cron for s in daily.schedules]
            assert cron == ["0 6 * * *"] and daily.schedules[0].schedule.timezone == "UTC"
            assert pc.read_deployment_by_name("train-lora/train-lora").work_pool_name == "gpu"
            credits = pc.read_global_concurrency_limit_by_name("chain-credits")
            assert credits.limit == 1000 and credits.slot_decay_per_second == 500  # a receipts call's burst, 500/s
            summary = [a for a in pc.read_artifacts() if a.key == "train-lora-summary"]
        assert summary and "LoRA" in summary[0].data and "[open in MLflow](http" in summary[0].data
        # From where the user looks: the train-lora run's artifact in the Prefect UI shows the verdict and the link.
        verdict = runs[0].data.tags["verdict"]
        # --watch as the README shows it: the run's logs come with its events, the loss of every step, then
        # the summary line with the verdict (rich wraps at 80 columns off a terminal: compare words)
        watched = " ".join(run.stdout.split())
        assert re.search(r"step 1/\d+ loss \d", watched) and "train-lora summary:" in watched
        assert " ".join(verdict[:40].split()) in watched
        with browser() as page:
            text = rendered_text(page, f"http://127.0.0.1:{prefect_port}/artifacts/artifact/{summary[0].id}",
                                 [verdict[:40], "open in MLflow"], "prefect_train_lora_artifact.png")
        assert verdict[:40] in text and "open in MLflow" in text
    finally:
        down = subprocess.run([str(BIN / "chainsignal"), "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "prefect-server" in down.stdout and "worker-gpu" in down.stdout
    assert not list((data_dir / "services" / "run").glob("*.json"))  # no process left registered


def test_prefect_server_on_a_local_postgres_cluster(tmp_path):
    """`make up`'s default database: a local PostgreSQL cluster (Debian's package) under the data
    dir, a Prefect server on it that answers, then both stopped."""
    import tempfile

    import requests

    from tasks.ops.services import ServiceManager, ensure_postgres, prefect_server, stop_postgres

    base = Path(tempfile.mkdtemp(prefix="chainsignal-pg-", dir="/tmp"))  # traversable by the postgres user
    base.chmod(0o755)
    pgdata, port, api_port = base / "pg", free_port(), free_port()
    url = ensure_postgres(pgdata, port)
    assert url == f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    mgr = ServiceManager(base / "run")
    try:
        mgr.start(prefect_server(api_port, base / "home", url), timeout_s=120)
        flows = requests.post(f"http://127.0.0.1:{api_port}/api/flows/filter", json={}, timeout=10)
        assert flows.status_code == 200 and flows.json() == []
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        rows = subprocess.run([*as_user, "psql", "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "-d", "prefect",
                               "-tAc", "select count(*) from flow"], capture_output=True, text=True, timeout=30)
        assert rows.returncode == 0 and rows.stdout.strip() == "0"  # the server's tables live in PostgreSQL
    finally:
        mgr.stop("prefect-server")
        stop_postgres(pgdata)
    assert not (pgdata / "postmaster.pid").exists()


def test_up_refuses_a_port_already_taken_before_starting_anything(data_dir):
    """With the MLflow port held by another process (e.g. the demo's `mlflow ui`), `up` used to report
    "mlflow-server healthy" while its own server had died: now one line, exit 2, nothing started."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    env = {**os.environ, "CHAINSIGNAL_STORAGE__DATA_DIR": str(data_dir), "CHAINSIGNAL_SERVICES__PREFECT_DATABASE": "sqlite",
           "CHAINSIGNAL_SERVICES__PREFECT_PORT": str(free_port()), "CHAINSIGNAL_SERVICES__MLFLOW_PORT": str(taken)}
    try:
        out = subprocess.run([str(BIN / "chainsignal"), "up"], env=env, capture_output=True, text=True, timeout=120)
    finally:
        holder.close()
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == (f"chainsignal: error: port {taken} is already in use, so mlflow-server cannot start: stop "
                                  f"what listens there or choose another port (services.mlflow_port, env "
                                  f"CHAINSIGNAL_SERVICES__MLFLOW_PORT)")
    assert not list((data_dir / "services" / "run").glob("*.json"))  # nothing started
