"""Helpers of the inference tests: run `mmllm` in a fresh process on one thread; the trained-run record."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# On a CPU shared with other jobs torch's thread pool slows tiny models down many times over.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_mmllm(*args, stdin: str | None = None, cwd: Path | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """`mmllm ARGS...` in a fresh interpreter; text stdout and stderr captured."""
    return subprocess.run([sys.executable, "-m", "mmllm.cli.main", *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=ONE_THREAD, cwd=cwd or REPO, timeout=timeout)


@dataclass
class TrainedRun:
    root: Path
    model: Path  # the exported model folder
    checkpoint: Path  # the Lightning checkpoint of the same weights
    data: Path  # shapes dataset: train/, val/, test_compositional/ each with captions/ and chat/
    images: Path  # a folder of PNG files taken from the val caption shard

    @property
    def image(self) -> Path:
        return sorted(self.images.glob("*.png"))[0]

