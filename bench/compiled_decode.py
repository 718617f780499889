"""The compiled decode step kept on disk (issue 41, item 1): SmolLM2-135M-Instruct at batch 1, 2 threads, per
precision, each process a fresh one on a cache folder of its own:

- `cold`: the first `--decode compiled` process on an empty cache folder: it compiles (announced in one line);
- `warm`: a second process on the same folder: Dynamo traces the step again, Inductor's kernels come from disk;
- `eager`: `--decode eager`, for the tokens per second compiling buys.

Per process: import + load seconds, the first token's seconds (prefill, never compiled), the second token's (the
first compiled step: the compile, or the trace and the disk cache), and decode tokens/s of a second generation (64
prompt tokens, 128 new, greedy, no stop). With --cpp-wrapper-too, float32 also with Inductor's cpp_wrapper.

    python bench/compiled_decode.py --out bench/results/2026-12-07-compiled-decode-final.json

bench/results/2026-12-07-compiled-decode.json is the first run, at commit 5dfbd7c, when cpp_wrapper was the CPU
default: its `cold`/`warm` rows are with cpp_wrapper, its `*_without_cpp_wrapper` rows without (what the default
became), and the cache was marked before prefill (its first tokens waited for Dynamo's import).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import machine, smollm2_folder, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT, NEW_TOKENS = 64, 128


def one_process(model_dir: str, precision: str, decode: str, cpp_wrapper: bool) -> dict:
    """In this (fresh) process: load, the first generation's token times, then a second generation's tokens/s."""
    started = time.perf_counter()
    import collections

    import torch

    torch.set_num_threads(2)
    import mmllm
    import mmllm.model.compiled_decode as compiled_decode
    from mmllm.model.generation import stream

    if cpp_wrapper:  # the library's default is without it
        compiled_decode.compiler_options = lambda device: {"cpp_wrapper": True}
    vlm = mmllm.load(model_dir, dtype="bfloat16" if precision == "bfloat16" else None,
                     quantize=precision if precision.startswith("int") else None, decode=decode)
    loaded = time.perf_counter() - started
    from pydoc_data.topics import topics

    ids = vlm.tokenizer.encode("\n\n".join(topics[name] for name in sorted(topics))).ids[:PROMPT]

    def generation():
        return stream(vlm.model, torch.tensor([ids]), max_new_tokens=NEW_TOKENS, stop_ids=[], decode=decode)

    with torch.inference_mode():
        steps = generation()
        begin = time.perf_counter()
        next(steps)
        first = time.perf_counter()
        next(steps)
        second = time.perf_counter()
        collections.deque(steps, maxlen=0)
        steps = generation()
        next(steps)
        next(steps)
        start = time.perf_counter()
        collections.deque(steps, maxlen=0)
        decode_s = time.perf_counter() - start
    return {"import_and_load_s": round(loaded, 2), "first_token_s": round(first - begin, 3),
            "first_token_from_start_s": round(first - started, 2), "second_token_s": round(second - first, 2),
            "second_token_from_start_s": round(second - started, 2),
            "decode_tokens_per_s": round((NEW_TOKENS - 2) / decode_s, 1)}


def run(model_dir: Path, precision: str, decode: str, cache: Path, cpp_wrapper: bool = False) -> dict:
    env = {**os.environ, "MMLLM_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    command = [sys.executable, __file__, "--one", json.dumps([str(model_dir), precision, decode, cpp_wrapper])]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{precision} {decode} failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    said = [line for line in result.stderr.splitlines() if line.startswith("mmllm:")]
    row |= {"process_s": round(time.perf_counter() - start, 1), "said": said}
    print(precision, decode, json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmllm-compiled-decode"))
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16", "int4"])
    parser.add_argument("--cpp-wrapper-too", action="store_true",
                        help="float32 also with Inductor's cpp_wrapper (cold and warm)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_process(*json.loads(args.one))))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    gguf, model_dir = smollm2_folder(args.work)
    import torch

    report = {"bench": "compiled_decode", "date": time.strftime("%Y-%m-%d"), "model": gguf.name, "threads": 2,
              "prompt_tokens": PROMPT, "new_tokens": NEW_TOKENS, "machine": machine(torch.device("cpu")),
              "torch": torch.__version__, "command": "python " + " ".join(sys.argv), "results": {}}
    for precision in args.precisions:
        cache = args.work / f"cache-{precision}"
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        rows = {"cold": run(model_dir, precision, "compiled", cache),
                "warm": run(model_dir, precision, "compiled", cache),
                "eager": run(model_dir, precision, "eager", cache)}
        if precision == "float32" and args.cpp_wrapper_too:
            other = args.work / "cache-float32-cpp-wrapper"
            subprocess.run(["rm", "-rf", str(other)], check=True)
            rows["cold_with_cpp_wrapper"] = run(model_dir, precision, "compiled", other, cpp_wrapper=True)
            rows["warm_with_cpp_wrapper"] = run(model_dir, precision, "compiled", other, cpp_wrapper=True)
        rows["compiled_vs_eager_decode"] = round(rows["warm"]["decode_tokens_per_s"]
                                                 / rows["eager"]["decode_tokens_per_s"], 2)
        report["results"][precision] = rows
        write_report(report, args.out)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
