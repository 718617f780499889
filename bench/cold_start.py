"""Cold start: the wall time and peak resident memory of whole processes, each command run `--runs` times in turn:
`mmllm generate --max-new-tokens 1` on a model folder (import, load, one token), Python importing torch alone,
and `mmllm --help`. Medians, with the weights' size on disk for the ratio of peak memory to weights.

    python bench/cold_start.py --model /tmp/mmllm-vs-llama-cpp/mmllm --out bench/results/DATE-cold-start.json
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def timed_process(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process run to its end. This process imports nothing heavy before
    the runs: a child's peak RSS counts the pages it shares with its parent between fork and exec."""
    start = time.perf_counter()
    pid = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
    _, status, usage = os.wait4(pid, 0)
    if status:
        raise RuntimeError(f"{command} exited with {status}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder (mmllm build --lm FILE.gguf)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    mmllm = [sys.executable, "-m", "mmllm.cli.main"]
    commands = {
        "generate 1 token": [*mmllm, "generate", "--model", str(args.model), "The capital of France is",
                             "--max-new-tokens", "1"],
        "import torch": [sys.executable, "-c", "import torch"],
        "mmllm --help": [*mmllm, "--help"],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            runs[name].append(timed_process(command))
    weights = sum(f.stat().st_size for f in args.model.glob("*.safetensors")) / 2**20
    results = {name: {"wall_s": round(statistics.median(r[0] for r in rows), 2),
                      "wall_s_all": [round(r[0], 2) for r in rows],
                      "peak_rss_mib": round(statistics.median(r[1] for r in rows), 1)}
               for name, rows in runs.items()}
    results["generate 1 token"]["peak_rss_over_weights"] = round(results["generate 1 token"]["peak_rss_mib"] / weights, 2)
    import torch
    from bench_common import write_report

    write_report({"bench": "cold_start", "date": time.strftime("%Y-%m-%d"), "model": str(args.model),
                  "weights_mib": round(weights, 1), "runs": args.runs, "torch": torch.__version__,
                  "cpu_count": os.cpu_count(), "results": results}, args.out)


if __name__ == "__main__":
    main()
