"""Running `mmllm` as a user does, in a fresh process, for the tests that go through the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# On a CPU shared with other jobs torch's thread pool slows tiny models down many times over.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def mmllm_command(*args) -> list[str]:
    """The installed `mmllm` script next to this Python (so DDP can start its other ranks the same way), or
    `python -m mmllm.cli.main` where the script is not installed."""
    script = Path(sys.executable).with_name("mmllm")
    prefix = [str(script)] if script.is_file() else [sys.executable, "-m", "mmllm.cli.main"]
    return [*prefix, *map(str, args)]


def run_mmllm(*args, cwd: Path | None = None, stdin: str | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """`mmllm ARGS...` in a fresh process on one thread; text stdout and stderr captured."""
    return subprocess.run(mmllm_command(*args), input=stdin, capture_output=True, text=True, env=SUBPROCESS_ENV,
                          cwd=cwd or REPO, timeout=timeout)


def start_mmllm(*args, cwd: Path) -> subprocess.Popen:
    """`mmllm ARGS` started in the background, stdout and stderr into files in cwd."""
    return subprocess.Popen(mmllm_command(*args), cwd=cwd, env=SUBPROCESS_ENV,
                            stdout=open(cwd / "stdout.txt", "w"), stderr=open(cwd / "stderr.txt", "w"))
