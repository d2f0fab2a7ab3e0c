"""Wiring shared by the flows: settings, the workspace and the clients, built in one place."""

from __future__ import annotations

from typing import Any

from tasks.settings import Settings, load_settings, with_overrides
from tasks.storage import Workspace


def settings_for(**sections: dict[str, Any] | None) -> Settings:
    """Resolved settings with the flow's parameters (None = keep) applied on top."""
    base = load_settings()
    clean = {k: v for k, v in sections.items() if v}
    return with_overrides(base, **clean) if clean else base


def workspace(settings: Settings) -> Workspace:
    return Workspace(settings.storage.data_dir)
