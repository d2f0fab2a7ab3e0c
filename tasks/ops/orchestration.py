"""Setup of the Prefect side: work pools, global concurrency limits, notification block, deployments.

``chainsignal setup`` (or ``make deploy``) calls :func:`setup` against the Prefect API in
``PREFECT_API_URL``. Deployments come from ``deployments/prefect.yaml`` through Prefect's own
``prefect deploy``; its pull step needs the checkout's absolute path, passed as
``CHAINSIGNAL_REPO_DIR`` at deploy time. Events: flows emit ``chainsignal.*`` events (failures,
blocked sources, stale data) through :func:`emit`, and call :func:`notify` on failure when a
notification block exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.core.errors import SetupError
from tasks.core.logs import get_logger
from tasks.core.settings import REPO_ROOT

PREFECT_FILE = REPO_ROOT / "deployments" / "prefect.yaml"


def ensure_work_pools(names: tuple[str, ...]) -> list[str]:
    """Create the process work pools that do not exist yet; returns the names created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    created = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
                created.append(name)
    return created


def ensure_source_limits(settings: Any) -> list[dict[str, Any]]:
    """Global concurrency limits for the live price/social APIs, one slot per request decaying at the
    source's configured requests per second (so every worker sharing the key keeps that rate)."""
    from tasks.clients.limits import ensure_credit_limit

    out = []
    p, t = settings.prices, settings.tweets
    if p.concurrency_limit and p.source != "file":
        rate = p.coingecko_requests_per_second if p.source == "coingecko" else p.binance_requests_per_second
        out.append(ensure_credit_limit(p.concurrency_limit, rate, burst_credits=1))
    live = [n for n in t.sources if n in ("x_api", "gdelt")]
    if t.concurrency_limit and live:
        rate = min(t.x_requests_per_second if n == "x_api" else t.gdelt_requests_per_second for n in live)
        out.append(ensure_credit_limit(t.concurrency_limit, rate, burst_credits=1))
    return out


def ensure_notification_block(webhook_url: str | None, block_name: str) -> bool:
    """A Slack webhook block (from settings, never written to a file) that flows notify on failure."""
    if not webhook_url:
        return False
    from prefect.blocks.notifications import SlackWebhook

    SlackWebhook(url=webhook_url).save(block_name, overwrite=True)
    return True


def deployment_pools(prefect_file: Path = PREFECT_FILE) -> list[str]:
    """Work pools the deployments in prefect.yaml run on (they must exist before `prefect deploy`)."""
    import yaml

    spec = yaml.safe_load(prefect_file.read_text())
    return sorted({d["work_pool"]["name"] for d in spec.get("deployments", []) if d.get("work_pool")})


def deploy_all(prefect_file: Path = PREFECT_FILE, repo_dir: Path = REPO_ROOT, timeout_s: float = 300) -> str:
    """Run ``prefect --no-prompt deploy --all`` from the repo root with the checkout's path filled in."""
    prefect = Path(sys.executable).parent / "prefect"
    env = {**os.environ, "CHAINSIGNAL_REPO_DIR": str(repo_dir), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.run([str(prefect), "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
                          cwd=repo_dir, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        text = " ".join(x.strip(" │╭╰─") for x in (proc.stdout + proc.stderr).splitlines() if x.strip(" │╭╰─"))
        raise SetupError(f"prefect deploy failed ({proc.returncode}): {text[-300:] or 'no output'}")
    return proc.stdout


def setup(settings: Any) -> dict[str, Any]:
    """Pools, rate limits, notification block and deployments; idempotent."""
    from tasks.clients.limits import ensure_credit_limit_from_settings

    log = get_logger()
    report: dict[str, Any] = {"api_url": os.environ.get("PREFECT_API_URL") or "(ephemeral)"}
    if not os.environ.get("PREFECT_API_URL"):
        raise SetupError("PREFECT_API_URL is not set: start a server (`chainsignal up`) and export the URL it prints")
    report["pools_created"] = ensure_work_pools(tuple(dict.fromkeys([*deployment_pools(), *settings.services.worker_pools])))
    report["rate_limit"] = ensure_credit_limit_from_settings(settings.rpc)
    report["source_limits"] = ensure_source_limits(settings)
    hook = settings.services.slack_webhook_url
    report["notification_block"] = (settings.services.notification_block
                                    if ensure_notification_block(hook.get_secret_value() if hook else None,
                                                                 settings.services.notification_block) else None)
    deploy_all()
    report["deployments"] = deployment_names()
    log.info("setup: %s", report)
    return report


def deployment_names() -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        return sorted(f"{flows.get(d.flow_id, '?')}/{d.name}" for d in client.read_deployments())


# ----------------------------------------------------------------------------- events and notifications
def emit(event: str, resource_id: str, **payload: Any) -> None:
    """Emit a ``chainsignal.<event>`` Prefect event (automations can trigger on it)."""
    try:
        from prefect.events import emit_event

        emit_event(event=f"chainsignal.{event}", resource={"prefect.resource.id": f"chainsignal.{resource_id}"},
                   payload={k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in payload.items()})
    except Exception as exc:  # an event must never fail the flow that emits it
        get_logger().warning("could not emit chainsignal.%s: %s", event, type(exc).__name__)


def notify_failure(flow, flow_run, state) -> None:
    """Flow on_failure hook: an event always, and a message when the notification block exists."""
    message = f"chainsignal: flow {flow.name} run {flow_run.name} failed: {state.message}"
    emit("flow.failed", f"flow.{flow.name}", flow_run=flow_run.name, message=state.message)
    try:
        from prefect.blocks.notifications import SlackWebhook

        from tasks.core.settings import load_settings

        SlackWebhook.load(load_settings().services.notification_block).notify(message)
    except Exception:  # no block configured (the common case) or Slack unreachable
        pass
