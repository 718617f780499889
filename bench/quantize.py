"""Quantised inference, method by method: decode speed and memory of a preset, answers and VQA of a trained model.

    python bench/quantize.py                                        # speed of `small`, every method
    python bench/quantize.py --model models/shapes-tiny --data data/shapes/val/chat   # + quality of that model
    ATEN_CPU_CAPABILITY=avx2 python bench/quantize.py               # as on a CPU with AVX2 only

Every method runs in a fresh process (so resident memory is its own) and prints one JSON object; the
parent prints them all as one. Speed (`--preset`, random weights: speed does not depend on them): batch 1, one
image + 64 prompt tokens, 64 new greedy tokens through the KV cache; `decode_tokens_per_s` counts the 63
after the first, `answer_s` is one whole `ask`-shaped answer (image, 16 prompt tokens, 8 new tokens), and
`rss_mib` is the process's resident memory with the model loaded and quantised. Quality (`--model`, `--data`):
the questions asked alone, greedy; `agreement` is the share answered exactly as float32 answers them,
`vqa_blind` the accuracy with every image blank.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_common as common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def quantized(model, method: str):
    from mmllm.compress.quantization import METHODS, quantize

    if method == "float32":
        return model, None
    report = quantize(model, METHODS[method].bits, method)
    return model, report


def speed(preset: str, method: str, new_tokens: int) -> dict:
    from generate import make_prompt

    from mmllm.config import VLMConfig
    from mmllm.model.generation import stream
    from mmllm.model import VLM
    from mmllm.compress.quantization import answer_seconds

    torch.manual_seed(0)
    model = VLM(VLMConfig.from_preset(preset)).eval()
    start = time.perf_counter()
    model, report = quantized(model, method)
    quantize_s = time.perf_counter() - start
    ids, pixels = make_prompt(model, 1, 64, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        for _ in stream(model, ids, pixel_values=pixels, max_new_tokens=4, stop_ids=[]):
            pass  # warm-up
        steps = stream(model, ids, pixel_values=pixels, max_new_tokens=new_tokens, stop_ids=[])
        next(steps)
        first = time.perf_counter()
        produced = sum(1 for _ in steps)
        decode_s = time.perf_counter() - first
    return {
        "decode_tokens_per_s": round(produced / decode_s, 2),
        "answer_s": round(answer_seconds(model, new_tokens=8, repeats=2), 4),
        "quantize_s": round(quantize_s, 2),
        "rss_mib": round(rss_mib(), 1),
        "weights_mib": round(report.weight_bytes[1] / 2**20, 1) if report else None,
        "float_layers": len(report.float_layers) if report else 0,
    }


def quality(model_dir: str, data: str, method: str, limit: int) -> dict:
    from data_pipelines.read.eval_samples import vqa_questions
    from mmllm.evaluation import vqa_scores
    from mmllm.evaluation.vqa_answers import answer_questions
    from mmllm.inference import load

    vlm = load(model_dir, device="cpu", quantize=None if method == "float32" else f"int{_bits(method)}",
               quantize_method=method)
    questions = vqa_questions(data, limit=limit)
    references = [[q.answer] for q in questions]
    types = [q.question_type for q in questions]
    answers = answer_questions(vlm, questions, "alone", max_new_tokens=8)
    blind = answer_questions(vlm, questions, "alone", blind=True, max_new_tokens=8)
    return {
        "questions": len(questions),
        "rss_mib_model": round(rss_mib(), 1),
        "vqa": round(vqa_scores(answers, references, types).overall, 4),
        "vqa_blind": round(vqa_scores(blind, references, types).overall, 4),
        "answers": answers,
    }


def _bits(method: str) -> int:
    from mmllm.compress.quantization import METHODS

    return METHODS[method].bits


def one(args) -> dict:
    torch.set_num_threads(args.threads)
    result = {"method": args.one}
    try:
        result.update(speed(args.preset, args.one, args.new_tokens))
        if args.model:
            result.update(quality(args.model, args.data, args.one, args.limit))
    except Exception as error:  # a method this machine cannot run (a missing kernel): say so, go on
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--methods", nargs="*", default=None, help="default: float32 and every method")
    parser.add_argument("--model", help="a trained model folder for the quality figures")
    parser.add_argument("--data", help="its chat shards (the questions)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many questions")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child: one method, one JSON line
    args = parser.parse_args()
    if args.model and not args.data:
        parser.error("--model needs --data")
    if args.one:
        print(json.dumps(one(args)))
        return
    from mmllm.compress.quantization import METHODS

    methods = args.methods or ["float32", *METHODS]
    results = []
    for method in methods:
        command = [sys.executable, __file__, "--one", method, "--preset", args.preset, "--threads", str(args.threads),
                   "--new-tokens", str(args.new_tokens)]
        if args.model:
            command += ["--model", args.model, "--data", args.data]
            if args.limit:
                command += ["--limit", str(args.limit)]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        results.append(json.loads(lines[-1]) if lines else {"method": method, "error": done.stderr[-500:]})
        print(f"{method}: " + json.dumps({k: v for k, v in results[-1].items() if k != "answers"}), file=sys.stderr)
    reference = next((r["answers"] for r in results if r["method"] == "float32" and "answers" in r), None)
    for result in results:
        if reference and "answers" in result:
            same = sum(a == b for a, b in zip(result["answers"], reference))
            result["agreement"] = round(same / len(reference), 4)
        result.pop("answers", None)
        if "decode_tokens_per_s" in result and "decode_tokens_per_s" in results[0]:
            result["decode_vs_float32"] = round(result["decode_tokens_per_s"] / results[0]["decode_tokens_per_s"], 2)
            result["answer_vs_float32"] = round(results[0]["answer_s"] / result["answer_s"], 2)
    print(json.dumps({
        "bench": "quantize",
        "machine": {**common.machine(torch.device("cpu")), "threads": args.threads,
                    "aten_cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "preset": args.preset,
        "model": args.model,
        "data": args.data,
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
