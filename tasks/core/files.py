"""Every local file appears whole: written under a temporary name in its folder, then renamed.

JSON is written indented with sorted keys, so a document's bytes depend on its content only.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_json(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, json_bytes(obj))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
