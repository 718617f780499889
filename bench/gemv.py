"""Which matrix-vector kernel streams a decode step's weights fastest on this CPU (issue 41, item 3): the 211 products
of one SmolLM2-135M decode step at batch 1 (30 layers of q/k/v/o/gate/up/down, then the 49152 x 576 head; about 540
MB in float32, far past the caches, so each product reads its weights from memory), through each candidate kernel,
on 1 and 2 threads; prints and writes GB/s per kernel.

    python bench/gemv.py --out bench/results/2026-12-07-gemv.json

Kernels: `F.linear` (MKL's SGEMV in float32, oneDNN in bf16), `x @ W_t` with the weight stored transposed, MKL's
packed GEMM (`torch.ops.mkl._mkl_linear` on `_mkl_reorder_linear_weight`, what Inductor's freezing uses), in float32
and bf16; and, in float32, the step with q/k/v and gate/up fused (mmllm.model.fused_projections).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import machine, write_report  # noqa: E402

LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]  # q k v o gate up down
FUSED = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # qkv o gate_up down
HEAD = (49152, 576)


def step_weights(fused: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(o, i) * 0.02 for _ in range(30) for o, i in (FUSED if fused else LAYER)] + [
        torch.randn(*HEAD) * 0.02]


def stream_rate(weights: list[torch.Tensor], kernel, prepare, dtype: torch.dtype, repeats: int) -> dict:
    """GB/s of one pass over every weight through `kernel(x, prepared)`, the median of `repeats` passes."""
    prepared = [prepare(w.to(dtype)) for w in weights]
    inputs = {n: torch.randn(1, n, dtype=dtype) for n in {w.shape[1] for w in weights}}

    def one_pass():
        for w, p in zip(weights, prepared):
            kernel(inputs[w.shape[1]], p)

    one_pass()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    megabytes = sum(w.numel() for w in weights) * torch.finfo(dtype).bits / 8 / 1e6
    return {"ms_per_step": round(seconds * 1e3, 2), "gb_per_s": round(megabytes / seconds / 1e3, 1)}


def kernels() -> dict:
    mkl = hasattr(torch.ops.mkl, "_mkl_linear") and torch.backends.mkl.is_available()
    found = {
        "F.linear": (lambda x, w: F.linear(x, w), lambda w: w),
        "x @ W_t": (lambda x, wt: x @ wt, lambda w: w.t().contiguous()),
    }
    if mkl:
        found["mkl packed"] = (lambda x, p: torch.ops.mkl._mkl_linear(x, p[0], p[1], None, 1),
                               lambda w: (torch.ops.mkl._mkl_reorder_linear_weight(w, 1), w))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    weights, fused = step_weights(False), step_weights(True)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, (kernel, prepare) in kernels().items():
            for dtype in (torch.float32, torch.bfloat16):
                if name == "mkl packed" and dtype != torch.float32:
                    continue
                row = {"threads": threads, "kernel": name, "dtype": str(dtype).removeprefix("torch."),
                       **stream_rate(weights, kernel, prepare, dtype, args.repeats)}
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        row = {"threads": threads, "kernel": "F.linear, q/k/v and gate/up fused", "dtype": "float32",
               **stream_rate(fused, lambda x, w: F.linear(x, w), lambda w: w, torch.float32, args.repeats)}
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    write_report({"bench": "gemv", "date": time.strftime("%Y-%m-%d"), "machine": machine(torch.device("cpu")),
                  "command": "python " + " ".join(sys.argv), "results": results}, args.out)


if __name__ == "__main__":
    main()
