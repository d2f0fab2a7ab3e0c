"""Local services without docker: a Prefect server, an MLflow server and workers as processes.

``chainsignal up`` starts them (pid and log files under ``<data_dir>/services/``), waits until
each answers its health check, and ``chainsignal down`` stops them. Measured with Prefect 3.9 /
MLflow 3.17: both servers are healthy after ~11-12 s; a process worker ignores SIGTERM and needs
SIGINT (twice) to stop; ``PREFECT_WORKER_QUERY_SECONDS`` shortens its poll.

The Prefect server runs on sqlite by default; ``services.prefect_database = "postgres"`` starts a
local PostgreSQL cluster (Debian's package) for it instead - needed where workers share global
concurrency limits (sqlite manages ~0.5 acquisitions/s under lock contention).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tasks.core.errors import ServiceError
from tasks.core.logs import get_logger


@dataclass(frozen=True)
class Service:
    name: str
    cmd: list[str]
    env: dict[str, str]
    health_url: str | None
    cwd: Path | None = None


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


# `prefect deployment run ... --watch` shows the run's logs (loss per step, the verdict) next to its events only
# when the server streams them out (both off by default in Prefect 3.9); docker/compose.yaml's server sets them too
LOG_STREAMING = {"PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "true", "PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED": "true"}


def prefect_server(port: int, home: Path, database_url: str | None = None) -> Service:
    # the UI asks the API at PREFECT_UI_API_URL, by default built from PREFECT_SERVER_API_PORT (4200),
    # not from --port: both follow services.prefect_port
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": "",
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
           **LOG_STREAMING}
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    return Service("prefect-server", [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   env, f"http://127.0.0.1:{port}/api/health")


def mlflow_server(port: int, backend_uri: str, artifacts: str) -> Service:
    return Service("mlflow-server", [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                                     "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts,
                                     "--workers", "1"], {}, f"http://127.0.0.1:{port}/health")


def prefect_worker(pool: str, api_url: str, repo_dir: Path, query_seconds: float = 2.0,
                   store_env: dict[str, str] | None = None) -> Service:
    """``store_env``: the data dir and tracking URI the flow runs it starts must use (those of `up`)."""
    return Service(f"worker-{pool}", [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                   {"PREFECT_API_URL": api_url, "PREFECT_WORKER_QUERY_SECONDS": str(query_seconds),
                    "CHAINSIGNAL_REPO_DIR": str(repo_dir), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(store_env or {})},
                   None, cwd=repo_dir)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on ``host:port`` (a bind would fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_taken(name: str, port: int, setting: str) -> ServiceError:
    env_name = "CHAINSIGNAL_" + setting.upper().replace(".", "__")
    return ServiceError(f"port {port} is already in use, so {name} cannot start: stop what listens there "
                        f"or choose another port ({setting}, env {env_name})")


class ServiceManager:
    """Starts and stops services as detached processes, remembering them in pid files."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def running(self, name: str) -> int | None:
        path = self._pidfile(name)
        if not path.is_file():
            return None
        pid = json.loads(path.read_text())["pid"]
        try:
            os.kill(pid, 0)
            return pid
        except OSError:
            path.unlink(missing_ok=True)
            return None

    def start(self, svc: Service, timeout_s: float = 90.0, port: int | None = None, port_setting: str = "") -> int:
        """Start ``svc`` unless it runs; with ``port``, refuse first if another process holds it (else
        its health check would be answered by that process while ours dies on "address in use")."""
        log = get_logger()
        if (pid := self.running(svc.name)) is not None:
            log.info("%s already running (pid %d)", svc.name, pid)
            return pid
        if port is not None and port_in_use(port):
            raise port_taken(svc.name, port, port_setting)
        logfile = open(self.run_dir / f"{svc.name}.log", "ab")
        env = {k: v for k, v in os.environ.items() if k != SERVER_OWNER_ENV}  # a service outlives the command
        proc = subprocess.Popen(svc.cmd, env={**env, **svc.env}, stdout=logfile, stderr=subprocess.STDOUT,
                                cwd=svc.cwd, start_new_session=True)
        self._pidfile(svc.name).write_text(json.dumps({"pid": proc.pid, "cmd": svc.cmd, "health": svc.health_url}))
        if svc.health_url:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise ServiceError(f"{svc.name} exited with code {proc.returncode} at start; see {self.run_dir / (svc.name + '.log')}")
                try:
                    if requests.get(svc.health_url, timeout=2).status_code == 200:
                        log.info("%s healthy after %.1fs (pid %d)", svc.name, timeout_s - (deadline - time.monotonic()), proc.pid)
                        return proc.pid
                except requests.RequestException:
                    pass
                time.sleep(0.5)
            self.stop(svc.name)
            raise ServiceError(f"{svc.name} not healthy at {svc.health_url} after {timeout_s:.0f}s")
        return proc.pid

    def stop(self, name: str, timeout_s: float = 20.0) -> bool:
        """SIGINT (twice: a Prefect worker needs it), then SIGTERM, then SIGKILL, on the process group."""
        pid = self.running(name)
        if pid is None:
            return False
        for sig, wait in ((signal.SIGINT, 3.0), (signal.SIGINT, timeout_s / 2), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                    if done:
                        break
                except ChildProcessError:  # not our child: poll for existence
                    try:
                        os.kill(pid, 0)
                    except OSError:
                        break
                time.sleep(0.2)
            else:
                continue
            break
        self._pidfile(name).unlink(missing_ok=True)
        return True

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.run_dir.glob("*.json"))


# ----------------------------------------------------------------------------- Prefect's temporary server
# Without a server (no `chainsignal up`, no PREFECT_API_URL) Prefect starts a temporary one, a uvicorn
# subprocess of the command that it stops at exit; a command killed with SIGKILL leaves it running
# (~230 MB each). Prefect's Popen takes no preexec_fn (so no PR_SET_PDEATHSIG, which would fire on the
# death of the starting thread anyway), so the next command stops the orphans instead. The server
# inherits the command's environment: the marker below names its owner (pid and start time, so a
# reused pid is not taken for the owner), and only servers carrying it are ever stopped.
SERVER_OWNER_ENV = "_CHAINSIGNAL_SERVER_OWNER"  # not CHAINSIGNAL_*: those must be settings
_TEMPORARY_SERVER = b"prefect.server.api.server:create_app"


def _started(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def mark_temporary_servers() -> None:
    """Name this process as the owner of any temporary server Prefect starts from it (before Prefect runs)."""
    started = _started(os.getpid())
    if started is not None:
        os.environ[SERVER_OWNER_ENV] = f"{os.getpid()}:{started}"


def orphaned_temporary_servers() -> list[int]:
    """Pids of Prefect temporary servers a chainsignal command started and outlived (Linux /proc; else [])."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if _TEMPORARY_SERVER not in (entry / "cmdline").read_bytes():
                continue
            env = dict(v.split(b"=", 1) for v in (entry / "environ").read_bytes().split(b"\0") if b"=" in v)
        except OSError:  # gone, or another user's
            continue
        owner = env.get(SERVER_OWNER_ENV.encode(), b"").decode()
        if env.get(b"PREFECT__SERVER_EPHEMERAL") != b"1" or ":" not in owner:
            continue
        pid, started = owner.split(":", 1)
        if _started(int(pid)) != started:
            found.append(int(entry.name))
    return found


def reap_temporary_servers(timeout_s: float = 5.0) -> list[int]:
    """Stop the orphaned temporary servers (SIGTERM, then SIGKILL after ``timeout_s``); returns their pids."""
    pids = orphaned_temporary_servers()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in pids if _started(p) is not None]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [p for p in alive if _started(p) is not None]
        if not alive:
            break
    if pids:
        get_logger().info("stopped %d temporary Prefect server(s) left by killed commands: pids %s", len(pids), pids)
    return pids


# ----------------------------------------------------------------------------- PostgreSQL (optional)
def ensure_postgres(pgdata: Path, port: int) -> str:
    """A local PostgreSQL cluster for the Prefect server; returns its asyncpg URL.

    PostgreSQL refuses to run as root: as root, the cluster is owned by and run as ``postgres``.
    """
    bindir = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    initdb = str(bindir / "initdb") if bindir else shutil.which("initdb")
    pg_ctl = str(bindir / "pg_ctl") if bindir else shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        raise ServiceError("services.prefect_database = postgres needs PostgreSQL (Debian: apt-get install postgresql)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    pgdata.mkdir(parents=True, exist_ok=True)
    if as_user:
        shutil.chown(pgdata, "postgres", "postgres")
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run([*as_user, initdb, "-D", str(pgdata), "-U", "prefect", "--auth=trust"], check=True, capture_output=True)
    status = subprocess.run([*as_user, pg_ctl, "-D", str(pgdata), "status"], capture_output=True)
    if status.returncode != 0:
        subprocess.run([*as_user, pg_ctl, "-D", str(pgdata), "-l", str(pgdata / "server.log"), "-w", "-o",
                        f"-p {port} -k {pgdata} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    subprocess.run([*as_user, "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"], capture_output=True)
    return f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"


def stop_postgres(pgdata: Path) -> None:
    bindir = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    pg_ctl = str(bindir / "pg_ctl") if bindir else shutil.which("pg_ctl")
    if pg_ctl and (pgdata / "postmaster.pid").exists():
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_user, pg_ctl, "-D", str(pgdata), "-m", "fast", "stop"], capture_output=True)


# ----------------------------------------------------------------------------- up / down
def _layout(settings) -> dict[str, Path]:
    base = Path(settings.storage.data_dir).resolve() / "services"
    return {"run": base / "run", "prefect_home": base / "prefect", "pgdata": base / "pg", "mlflow": base / "mlflow"}


def tracking_store(settings) -> str:
    """The one MLflow store of this installation: the CLI's (``settings.tracking_uri``, by default
    ``<data_dir>/mlflow.db``) when it is a database; the default file when the CLI points at a server."""
    uri = settings.tracking_uri
    if uri.startswith(("sqlite:", "postgresql:", "postgres:", "mysql:")):
        return uri
    return f"sqlite:///{Path(settings.storage.data_dir).resolve() / 'mlflow.db'}"


def start_all(settings, repo_dir: Path | None = None) -> dict:
    """Prefect server (sqlite or local PostgreSQL), MLflow server, one worker per pool, all on the
    installation's one MLflow store: the MLflow server serves the store the CLI and the demo write, and
    the workers' flow runs write it too, so every run shows in the UI printed here without exporting
    anything. Ports are checked before anything starts."""
    from tasks.core.settings import REPO_ROOT

    sv = settings.services
    paths = _layout(settings)
    mgr = ServiceManager(paths["run"])
    wanted = [("prefect-server", sv.prefect_port, "services.prefect_port"), ("mlflow-server", sv.mlflow_port, "services.mlflow_port")]
    for name, port, setting in wanted:  # both checked before either starts
        if mgr.running(name) is None and port_in_use(port):
            raise port_taken(name, port, setting)
    db_url = ensure_postgres(paths["pgdata"], sv.postgres_port) if sv.prefect_database == "postgres" else None
    paths["prefect_home"].mkdir(parents=True, exist_ok=True)
    mgr.start(prefect_server(sv.prefect_port, paths["prefect_home"], db_url), port=sv.prefect_port,
              port_setting="services.prefect_port")
    paths["mlflow"].mkdir(parents=True, exist_ok=True)
    store = tracking_store(settings)
    artifacts = settings.storage.artifacts_uri or str(paths["mlflow"] / "artifacts")
    mgr.start(mlflow_server(sv.mlflow_port, store, artifacts), port=sv.mlflow_port, port_setting="services.mlflow_port")
    api = f"http://127.0.0.1:{sv.prefect_port}/api"
    store_env = {"CHAINSIGNAL_STORAGE__DATA_DIR": str(Path(settings.storage.data_dir).resolve()),
                 "CHAINSIGNAL_TRACKING__TRACKING_URI": store}
    for pool in sv.worker_pools:
        mgr.start(prefect_worker(pool, api, repo_dir or REPO_ROOT, sv.worker_query_seconds, store_env))
    return {"services": mgr.names(), "logs": str(paths["run"]), "export": {"PREFECT_API_URL": api},
            "tracking_store": store, "prefect_ui": f"http://127.0.0.1:{sv.prefect_port}",
            "mlflow_ui": f"http://127.0.0.1:{sv.mlflow_port}"}


def running_prefect_api(settings) -> str | None:
    """The API of the Prefect server `up` started for these settings, when it runs and answers."""
    sv = settings.services
    if ServiceManager(_layout(settings)["run"]).running("prefect-server") is None:
        return None
    api = f"http://127.0.0.1:{sv.prefect_port}/api"
    try:
        return api if requests.get(f"{api}/health", timeout=2).status_code == 200 else None
    except requests.RequestException:
        return None


def stop_all(settings) -> dict:
    paths = _layout(settings)
    mgr = ServiceManager(paths["run"])
    order = [n for n in mgr.names() if n.startswith("worker-")] + ["mlflow-server", "prefect-server"]
    stopped = [n for n in order if mgr.stop(n)]
    stop_postgres(paths["pgdata"])
    return {"stopped": stopped}
