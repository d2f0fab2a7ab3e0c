"""S3-compatible object stores through fsspec: the options every reader passes, and a fail-fast check.

The lake (``storage.lake_uri``) and MLflow's artifacts (``storage.artifacts_uri``) may live on one;
:mod:`tasks.core.storage` uses these helpers and still owns every path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.core.errors import StorageError


def is_remote_uri(uri: str | Path | None) -> bool:
    return isinstance(uri, str) and "://" in uri and not uri.startswith("file://")


def s3_options(endpoint_url: str | None = None, region: str | None = None) -> dict[str, dict[str, Any]]:
    """fsspec (s3fs) and polars options for one S3-compatible store.

    Credentials are deliberately absent: s3fs, polars and MLflow (boto3) all read them from the
    standard AWS chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
    ``~/.aws``, an instance role), so no secret passes through our settings or logs.
    """
    fs: dict[str, Any] = {
        "use_listings_cache": False,  # another host writes the same prefix: never trust a cached listing
        "skip_instance_cache": True,
        "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}},
    }
    pl_opts: dict[str, str] = {}
    if endpoint_url:
        fs["endpoint_url"] = endpoint_url
        pl_opts["aws_endpoint_url"] = endpoint_url
        if endpoint_url.startswith("http://"):
            pl_opts["aws_allow_http"] = "true"
    if region:
        fs["client_kwargs"] = {"region_name": region}
        pl_opts["aws_region"] = region
    return {"fs": fs, "polars": pl_opts}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def check_bucket(fs: Any, url: str, setting: str) -> None:
    """Fail fast, in one line naming the setting, when the store or bucket cannot be used."""
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    endpoint = getattr(fs, "endpoint_url", None) or "AWS S3"
    try:
        fs.ls(bucket, refresh=True)
    except FileNotFoundError:
        raise StorageError(f"{setting}: bucket {bucket!r} does not exist on {endpoint}") from None
    except PermissionError as exc:
        raise StorageError(f"{setting}: {endpoint} refused access to bucket {bucket!r} (check AWS_ACCESS_KEY_ID / "
                           f"AWS_SECRET_ACCESS_KEY): {_one_line(exc)}") from None
    except OSError as exc:
        raise StorageError(f"{setting}: cannot use bucket {bucket!r} on {endpoint}: {_one_line(exc)}") from None
    except Exception as exc:  # botocore connection errors are not OSErrors
        raise StorageError(f"{setting}: cannot reach {endpoint} (storage.s3_endpoint_url): {_one_line(exc)}") from None
