"""Reading files a user hands us: a missing or broken file is a UsageError that names it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmllm.errors import UsageError


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; UsageError naming the file when it is missing, unreadable or not an object."""
    if not path.is_file():
        raise UsageError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise UsageError(f"{path} does not hold a JSON object")
    return data
