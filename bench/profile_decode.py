"""Where a decode step's milliseconds go, per precision: torch.profiler over greedy decoding of a real model at batch
1 (the same setup as bench/vs_llama_cpp.py: a 64-token prompt of Python's documentation, 2 threads), each
precision in a fresh process. Reported per precision: tokens/s outside the profiler, milliseconds per token in
each kind of work (matmul kernels, attention, norms, element-wise ops, copies and casts, the rest), and the
operators that take the most time.

    python bench/profile_decode.py --out bench/results/DATE-profile-decode.json
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import write_report  # noqa: E402
from vs_llama_cpp import default_gguf, prompt_text  # noqa: E402

PRECISIONS = ("float32", "bfloat16", "int8", "int4")
PROMPT, NEW_TOKENS, PROFILED_TOKENS = 64, 128, 33
KINDS = {  # operator name fragments -> the kind of work
    "matmul": ("mm", "linear", "addmm", "_weight_int", "quantized::", "onednn", "mkldnn", "matmul", "bmm"),
    "attention": ("scaled_dot_product", "flash_attention", "softmax"),
    "norm": ("rms_norm", "pow", "mean", "rsqrt"),
    "copy and cast": ("copy_", "_to_copy", "to", "contiguous", "clone", "empty", "index_put"),
    "element-wise": ("mul", "add", "sub", "div", "neg", "silu", "cat", "cos", "sin", "where", "argmax", "exp"),
}


def kind_of(op: str) -> str:
    name = op.removeprefix("aten::")
    for kind, fragments in KINDS.items():
        if any(name == f or name.startswith(f) or f in op for f in fragments):
            return kind
    return "other"


def profile_one(model_dir: Path, precision: str, threads: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    import mmllm
    from mmllm.model.generation import stream

    torch.set_num_threads(threads)
    vlm = mmllm.load(model_dir, dtype="bfloat16" if precision == "bfloat16" else None,
                     quantize=precision if precision.startswith("int") else None)
    ids = vlm.tokenizer.encode(prompt_text()).ids[:PROMPT]

    def decode(new_tokens: int) -> float:
        with torch.inference_mode():
            steps = stream(vlm.model, torch.tensor([ids]), max_new_tokens=new_tokens, stop_ids=[], decode=vlm.decode)
            next(steps)  # prefill: not part of what is timed or profiled
            start = time.perf_counter()
            collections.deque(steps, maxlen=0)
            return (new_tokens - 1) / (time.perf_counter() - start)

    decode(8)
    tokens_per_s = decode(NEW_TOKENS)
    with torch.inference_mode():
        steps = stream(vlm.model, torch.tensor([ids]), max_new_tokens=PROFILED_TOKENS, stop_ids=[],
                       decode=vlm.decode)
        next(steps)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            collections.deque(steps, maxlen=0)
    per_token = PROFILED_TOKENS - 1
    ops = [(e.key, e.self_cpu_time_total / 1e3 / per_token, e.count / per_token) for e in prof.key_averages()]
    ops.sort(key=lambda op: -op[1])
    kinds = collections.Counter()
    for name, ms, _ in ops:
        kinds[kind_of(name)] += ms
    profiled = sum(ms for _, ms, _ in ops)
    return {
        "decode_tokens_per_s": round(tokens_per_s, 1),
        "wall_ms_per_token": round(1000 / tokens_per_s, 2),  # unprofiled
        "profiled_ms_per_token": round(profiled, 2),  # operators' own time, under the profiler
        # Python, module calls and dispatch between the operators (the profiler's overhead makes it a bound)
        "outside_operators_ms_per_token": round(max(0.0, 1000 / tokens_per_s - profiled), 2),
        "ms_per_token_by_kind": {k: round(v, 2) for k, v in kinds.most_common()},
        "top_ops": [{"op": name, "ms_per_token": round(ms, 3), "calls_per_token": round(calls, 1)}
                    for name, ms, calls in ops[:12]],
        "quantization": vlm.quantization.method if vlm.quantization is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmllm-vs-llama-cpp"))
    parser.add_argument("--precisions", nargs="*", default=list(PRECISIONS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_dir = args.work / "mmllm"
    if args.one:
        print(json.dumps(profile_one(model_dir, args.one, args.threads)))
        return
    gguf = args.gguf or default_gguf()
    if not (model_dir / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "mmllm.cli.main", "build", "--lm", str(gguf), "--out", str(model_dir)],
                       check=True, stdout=subprocess.DEVNULL)
    results = {}
    for precision in args.precisions:
        command = [sys.executable, __file__, "--one", precision, "--threads", str(args.threads), "--work",
                   str(args.work)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[precision] = json.loads(output.strip().splitlines()[-1])
    import platform

    import torch

    from vs_llama_cpp import cpu_flags

    write_report({"bench": "profile_decode", "date": time.strftime("%Y-%m-%d"), "model": gguf.name,
                  "threads": args.threads, "prompt_tokens": PROMPT, "profiled_tokens": PROFILED_TOKENS - 1,
                  "cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
                  "torch": torch.__version__, "results": results}, args.out)


if __name__ == "__main__":
    main()
