"""deployments/prefect.yaml and docker/ are validated here (no docker engine runs on CI)."""

import importlib
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_deployment_points_at_a_flow_of_the_same_name():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    names = set()
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        assert (ROOT / path).is_file(), path
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert flow.name == dep["name"], (flow.name, dep["name"])  # deployment is <flow>/<name>
        assert dep["work_pool"]["name"] in {"cpu", "gpu"}
        names.add(dep["name"])
    assert {"daily", "train-lora", "evaluate"} <= names
    daily = next(d for d in spec["deployments"] if d["name"] == "daily")
    assert daily["schedules"][0]["cron"] == "0 6 * * *" and daily["schedules"][0]["timezone"] == "UTC"
    for trains in ("train-lora", "walk-forward"):  # the flows that train adapters run where the GPU is
        assert next(d for d in spec["deployments"] if d["name"] == trains)["work_pool"]["name"] == "gpu", trains


def test_no_secret_is_written_in_deployment_or_compose_files():
    for path in [ROOT / "deployments" / "prefect.yaml", ROOT / "docker" / "compose.yaml"]:
        text = path.read_text()
        assert not re.search(r"(?i)api_key:\s*['\"]?[0-9a-f]{16,}", text)
        assert not re.search(r"infura\.io/v3/[0-9a-f]{16,}", text)


def test_docker_files_copy_only_what_exists():
    for dockerfile in (ROOT / "docker").glob("Dockerfile.*"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{dockerfile.name}: {src}"
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert {"prefect", "mlflow", "worker-cpu", "worker-gpu"} <= set(compose["services"])
    for svc in compose["services"].values():
        if "build" in svc:
            assert (ROOT / "docker" / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()


def test_the_compose_prefect_server_streams_logs_as_make_ups_does():
    """`--watch` against the compose server prints the run's logs too: the same settings as `make up`'s server."""
    from tasks.ops.services import LOG_STREAMING

    env = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["prefect"]["environment"]
    assert {k: env.get(k) for k in LOG_STREAMING} == LOG_STREAMING


def test_compose_file_matches_the_compose_specification():
    import subprocess
    import sys

    tool = Path(sys.executable).parent / "check-jsonschema"
    out = subprocess.run([str(tool), "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker" / "compose.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfiles_pass_hadolint():
    import subprocess
    import sys

    tool = Path(sys.executable).parent / "hadolint"
    files = sorted(str(p) for p in (ROOT / "docker").glob("Dockerfile.*"))
    out = subprocess.run([str(tool), "--no-color", *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
