"""Small helpers every flow shares: the date window, the run summary and its Prefect artifact."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tasks.core.errors import InputError
from tasks.core.logs import get_logger


def utc_today() -> date:
    """The flows' one clock read: today's UTC date (the day whose candles and posts are still open)."""
    return datetime.now(UTC).date()


def resolve_days(start: date | None, end: date | None, today: date | None = None) -> list[date]:
    """Days start..end inclusive; both default to yesterday (UTC), the last whole day."""
    yesterday = (today or utc_today()) - timedelta(days=1)
    start = start or end or yesterday
    end = end or start
    if end < start:
        raise InputError(f"--end {end} is before --start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def summarize(flow_name: str, reports: list[dict[str, Any]], started: float, **extra: Any) -> dict[str, Any]:
    statuses = Counter(r.get("status", "unknown") for r in reports)
    return {
        "flow": flow_name,
        "partitions": len(reports),
        **{f"partitions_{k}": v for k, v in sorted(statuses.items())},
        "rows_written": sum(int(r.get("rows") or r.get("transactions") or 0) for r in reports if r.get("status") == "done"),
        "seconds": round(time.perf_counter() - started, 2),
        **extra,
    }


def publish_summary(summary: dict[str, Any], title: str, details: list[dict[str, Any]] | None = None) -> None:
    """Log the summary and publish it as a Prefect markdown artifact (when inside a flow run)."""
    log = get_logger()
    log.info("%s: %s", title, ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list))))
    try:
        from prefect.artifacts import create_markdown_artifact
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return
        lines = [f"## {title}", ""]
        if summary.get("verdict"):
            lines += [f"**{summary['verdict']}**", ""]
        lines += ["| key | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in summary.items() if not isinstance(v, (dict, list)) and k != "verdict"]
        if details:
            problems = [d for d in details if d.get("status") not in ("done", "skipped")]
            if problems:
                lines += ["", "### Not done", "", "| day | status | why |", "|---|---|---|"]
                lines += [f"| {d.get('day')} | {d.get('status')} | {d.get('error') or d.get('gaps') or d.get('sources') or ''} |"
                          for d in problems[:50]]
        key = title.lower().replace(" ", "-").replace("_", "-")
        create_markdown_artifact("\n".join(lines), key=key, description=title)
    except ImportError:
        pass


def _cell(value: Any) -> str:
    """A markdown table cell: links clickable, pipes escaped."""
    text = str(value).replace("|", "\\|")
    return f"[open in MLflow]({value})" if text.startswith(("http://", "https://")) else text


def started() -> float:
    return time.perf_counter()
