"""Wiring shared by the flows: settings, the workspace and the clients, built in one place."""

from __future__ import annotations

from typing import Any

from tasks.settings import Settings, load_settings, refuse_keys_in_parameters, with_overrides
from tasks.storage import Workspace


def settings_for(**sections: dict[str, Any] | None) -> Settings:
    """Resolved settings with the flow's parameters (None = keep) applied on top."""
    clean = {k: v for k, v in sections.items() if v}
    refuse_keys_in_parameters(**clean)
    base = load_settings()
    return with_overrides(base, **clean) if clean else base


def workspace(settings: Settings) -> Workspace:
    """Local folders under data_dir; the lake and MLflow artifacts possibly on S3 (checked here, once)."""
    st = settings.storage
    return Workspace(st.data_dir, lake_uri=st.lake_uri, artifacts_uri=st.artifacts_uri,
                     s3_endpoint_url=st.s3_endpoint_url, s3_region=st.s3_region, check=True)
