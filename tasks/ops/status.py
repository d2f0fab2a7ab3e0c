"""What `chainsignal status` shows: lake coverage per dataset, gaps, recorded failures, the track record."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tasks.core.schemas import SCHEMAS


def lake_coverage(lake) -> list[dict[str, Any]]:
    """Per dataset: complete days, first and last, missing days in between, days with problems."""
    rows = []
    for dataset in SCHEMAS:
        days = lake.completed_days(dataset)
        if not days:
            rows.append({"dataset": dataset, "days": 0})
            continue
        have = set(days)
        span = (days[-1] - days[0]).days + 1
        missing = [days[0] + timedelta(days=i) for i in range(span) if days[0] + timedelta(days=i) not in have]
        problems = []
        for day in days:
            m = lake.manifest(dataset, day) or {}
            bad = {k: v for k, v in (m.get("sources") or {}).items() if not str(v).startswith("ok")}
            if bad or m.get("gaps") or m.get("stopped"):
                problems.append(f"{day}: {bad or m.get('gaps') or m.get('stopped')}")
        rows.append({"dataset": dataset, "days": len(days), "first": days[0].isoformat(), "last": days[-1].isoformat(),
                     "missing_days": len(missing), "first_missing": [d.isoformat() for d in missing[:5]],
                     "days_with_problems": len(problems), "problems": problems[:5]})
    return rows
