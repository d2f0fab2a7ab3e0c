"""Wiring shared by the flows: settings and the workspace, built in one place."""

from __future__ import annotations

from typing import Any

from tasks.core.settings import Settings, resolve_settings
from tasks.core.storage import Workspace


def settings_for(**sections: dict[str, Any] | None) -> Settings:
    """Resolved settings with the flow's parameters (None = keep) applied on top."""
    return resolve_settings(**sections)


def workspace(settings: Settings) -> Workspace:
    """Local folders under data_dir; the lake and MLflow artifacts possibly on S3 (checked here, once)."""
    return Workspace.from_settings(settings)
