"""Where mmllm keeps what it measured or compiled for this machine: $MMLLM_CACHE_DIR, else ~/.cache/mmllm."""

from __future__ import annotations

import os
from pathlib import Path


def cache_folder() -> Path:
    return Path(os.environ.get("MMLLM_CACHE_DIR") or Path.home() / ".cache" / "mmllm")
