"""Fused q/k/v and gate/up projections (mmllm.model.fused_projections) against the separate layers: eager decode
tokens/s of SmolLM2-135M-Instruct at batch 1, 2 threads, float32 and `--quantize int4`, each configuration in a fresh
process, fused and separate alternated for --rounds rounds (a 64-token prompt, 128 new tokens, greedy, no stop; the
median of 3 generations per process).

    python bench/fused_projections.py --out bench/results/2026-12-07-fused-projections.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import machine, smollm2_folder, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one_process(model_dir: str, precision: str, fuse: bool) -> dict:
    import torch

    torch.set_num_threads(2)
    import mmllm
    from mmllm.model.generation import stream

    vlm = mmllm.load(model_dir, quantize=precision if precision.startswith("int") else None, fuse=fuse)
    from pydoc_data.topics import topics

    ids = vlm.tokenizer.encode("\n\n".join(topics[name] for name in sorted(topics))).ids[:64]
    rates = []
    with torch.inference_mode():
        for _ in range(3):
            steps = stream(vlm.model, torch.tensor([ids]), max_new_tokens=129, stop_ids=[], decode="eager")
            next(steps)
            next(steps)
            start = time.perf_counter()
            collections.deque(steps, maxlen=0)
            rates.append(127 / (time.perf_counter() - start))
    return {"decode_tokens_per_s": round(statistics.median(rates), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmllm-fused-projections"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_process(*json.loads(args.one))))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    gguf, model_dir = smollm2_folder(args.work)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMLLM_CACHE_DIR": str(args.work / "cache")}
    import torch

    rows: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.rounds):
        for precision in ("float32", "int4"):
            for fuse in (False, True):
                command = [sys.executable, __file__, "--one", json.dumps([str(model_dir), precision, fuse])]
                result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
                rate = json.loads(result.stdout.strip().splitlines()[-1])["decode_tokens_per_s"]
                rows[f"{precision}:{'fused' if fuse else 'separate'}"].append(rate)
                print(precision, fuse, rate, file=sys.stderr, flush=True)
    results = {name: {"decode_tokens_per_s": statistics.median(rates), "all": rates} for name, rates in rows.items()}
    for precision in ("float32", "int4"):
        results[f"{precision}:fused/separate"] = round(results[f"{precision}:fused"]["decode_tokens_per_s"]
                                                       / results[f"{precision}:separate"]["decode_tokens_per_s"], 3)
    write_report({"bench": "fused_projections", "date": time.strftime("%Y-%m-%d"), "model": gguf.name, "threads": 2,
                  "machine": machine(torch.device("cpu")), "command": "python " + " ".join(sys.argv),
                  "results": results}, args.out)


if __name__ == "__main__":
    main()
