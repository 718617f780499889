"""Generation latency of a preset: time to first token, decode tokens/s, KV cache vs recomputation, decode bound.

    python bench/generate.py                                   # tiny and small, batch 1 and 8, fp32 and bf16
    python bench/generate.py --preset small --batch-size 1 --dtype fp32 --repeats 3
    python bench/generate.py --device cuda --dtype bf16 --batch-size 1 32
    python bench/generate.py --preset small --decode eager static compiled   # the three decode paths

Prompt: one image + 64 text tokens per row; 128 new tokens, greedy, no stop token (every row runs to the end).
- ttft: prompt in -> first new token out (image encoding, prefill over the cache, head, argmax).
- decode: the other 127 tokens through `mmllm.model.generation.stream` (KV cache); tokens/s counts every row.
- recompute: the same tokens with `VLM.forward` over the whole sequence (image included) at every step, the
  reference the KV cache must beat; for big presets only some of the 128 steps are timed (evenly spread) and
  the total is their mean x 128 (`recompute_steps_timed` says how many). Its tokens are checked against the
  cache's.
- decode kind (`--decode`, mmllm.model.generation): eager (the default on CPUs), static (fixed shapes), compiled (the
  static step through torch.compile; CUDA graphs on a GPU). `warmup_s` is the first, untimed generation of 8
  tokens, which holds the compilation; `tokens_equal_eager` checks the greedy tokens against the eager path's.
- decode bound: one decode step reads every LM weight once (the tied head reads the whole embedding matrix)
  plus the KV cache; the memory read bandwidth measured in this run divided by those bytes is the most
  decode steps per second this memory allows. `bound_fraction` = achieved / bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_common as common  # noqa: E402
from train_step import build_config  # noqa: E402

from mmllm.model.generation import stream  # noqa: E402
from mmllm.model import VLM  # noqa: E402

VOCAB = {"tiny": 512}  # the demo tokenizer's size; other presets keep theirs


def make_prompt(model: VLM, batch_size: int, text_tokens: int, device: torch.device, dtype: torch.dtype, seed=0):
    """(B, tokens_per_image + text_tokens) ids, image block first, and one random image per row."""
    config = model.config
    g = torch.Generator().manual_seed(seed)
    low = max(config.image_token_id, config.pad_token_id, *config.eos_token_ids) + 1
    text = torch.randint(low, config.lm.vocab_size, (batch_size, text_tokens), generator=g)
    image = torch.full((batch_size, config.tokens_per_image), config.image_token_id)
    size = config.vision.image_size
    pixels = torch.randn(batch_size, 3, size, size, generator=g)
    return torch.cat([image, text], 1).to(device), pixels.to(device, dtype)


def kv_cache_run(model, input_ids, pixels, new_tokens, device, decode="eager") -> tuple[float, float, torch.Tensor]:
    """(ttft seconds, decode seconds for the remaining tokens, new tokens (B, new_tokens))."""
    common.synchronize(device)
    start = time.perf_counter()
    steps = stream(model, input_ids, pixel_values=pixels, max_new_tokens=new_tokens, stop_ids=[], decode=decode)
    produced = [list(next(steps).values())]
    first = time.perf_counter()
    produced += [list(step.values()) for step in steps]
    end = time.perf_counter()
    return first - start, end - first, torch.tensor(produced, device=input_ids.device).T


@torch.inference_mode()
def recompute_run(model, input_ids, pixels, kv_tokens: torch.Tensor, steps_timed: int, device):
    """Mean wall and CPU seconds of one full-recomputation step over `steps_timed` of the steps, how many
    argmaxes agree with the KV-cache tokens, and how many steps were timed. Step i feeds the prompt + the
    first i cached tokens."""
    new_tokens = kv_tokens.size(1)
    picks = torch.linspace(0, new_tokens - 1, steps_timed).round().long().unique().tolist()
    times, agree = [], 0
    cpu_start = time.process_time()
    for i in picks:
        sequence = torch.cat([input_ids, kv_tokens[:, :i]], dim=1)
        common.synchronize(device)
        start = time.perf_counter()
        logits = model(sequence, pixel_values=pixels).logits[:, -1]
        logits[:, model.config.image_token_id] = float("-inf")
        token = logits.argmax(-1)
        common.synchronize(device)
        times.append(time.perf_counter() - start)
        agree += int((token == kv_tokens[:, i]).all())
    cpu_per_step = (time.process_time() - cpu_start) / len(picks)
    return sum(times) / len(times), cpu_per_step, agree, len(picks)


def decode_bytes(model: VLM, batch_size: int, context: int, dtype: torch.dtype) -> dict:
    """Bytes one decode step must read: LM weights (embedding rows aside, the head reads the whole table) + cache."""
    lm = model.lm
    size = torch.tensor([], dtype=dtype).element_size()
    weights = sum(p.numel() for p in lm.parameters()) * size  # tied: embed_tokens is the head, counted once
    c = model.config.lm
    kv = 2 * c.n_layers * c.n_kv_heads * c.head_dim * context * batch_size * size
    return {"weight_bytes": weights, "kv_cache_bytes": kv, "bytes_per_step": weights + kv}


def bench_case(preset: str, dtype_name: str, batch_size: int, args, bandwidth: float, device,
               decode_kind: str = "eager", eager_tokens: dict | None = None) -> dict:
    dtype = common.DTYPES[dtype_name]
    torch.manual_seed(0)
    config = build_config(preset, VOCAB.get(preset))
    model = VLM(config).to(device, dtype).eval()
    input_ids, pixels = make_prompt(model, batch_size, args.prompt_tokens, device, dtype)
    prompt_len = input_ids.size(1)
    warmup_start = time.perf_counter()
    kv_cache_run(model, input_ids, pixels, 8, device, decode_kind)  # warm-up: allocator, kernels, compilation
    warmup_s = time.perf_counter() - warmup_start
    ttfts, decodes, cpu_decode = [], [], []
    for _ in range(args.repeats):
        cpu_start = time.process_time()
        ttft, decode, tokens = kv_cache_run(model, input_ids, pixels, args.new_tokens, device, decode_kind)
        cpu_decode.append(time.process_time() - cpu_start)
        ttfts.append(ttft)
        decodes.append(decode)
    decode_steps = args.new_tokens - 1
    decode_s = common.summary(decodes)
    case = (preset, dtype_name, batch_size)
    if eager_tokens is not None and decode_kind == "eager":
        eager_tokens[case] = tokens
    row = {
        "preset": preset, "dtype": dtype_name, "batch_size": batch_size, "decode": decode_kind,
        "warmup_s": round(warmup_s, 3), "prompt_len": prompt_len,
        "image_tokens": config.tokens_per_image, "new_tokens": args.new_tokens,
        "ttft": common.summary(ttfts),
        "decode_tokens_per_s": batch_size * decode_steps / decode_s["median_s"],
        "decode_tokens_per_s_best": batch_size * decode_steps / decode_s["best_s"],
        "decode_ms_per_step": 1000 * decode_s["median_s"] / decode_steps,
        "cpu_s_per_generation": min(cpu_decode),
    }
    if eager_tokens is not None and decode_kind != "eager" and case in eager_tokens:
        row["tokens_equal_eager"] = bool(torch.equal(tokens, eager_tokens[case]))
    kv_total = min(t + d for t, d in zip(ttfts, decodes))
    steps_timed = args.recompute_steps or (args.new_tokens if preset == "tiny" else 8)
    if steps_timed > 0 and decode_kind == "eager":
        mean_step, cpu_step, agree, timed = recompute_run(model, input_ids, pixels, tokens, steps_timed, device)
        recompute_total = mean_step * args.new_tokens
        row.update({
            "recompute_total_s": recompute_total, "recompute_steps_timed": timed,
            "recompute_tokens_equal_kv_cache": f"{agree}/{timed}",
            "kv_cache_total_s": kv_total, "kv_cache_speedup": recompute_total / kv_total,
            # The same ratio in process CPU time: steadier than wall time on cores other jobs share.
            "recompute_cpu_s": cpu_step * args.new_tokens,
            "kv_cache_speedup_cpu": cpu_step * args.new_tokens / min(cpu_decode),
        })
    context = prompt_len + args.new_tokens // 2  # mean cached length over the decode
    need = decode_bytes(model, batch_size, context, dtype)
    bound_steps = bandwidth / need["bytes_per_step"]
    row.update({
        **need, "bound_decode_steps_per_s": bound_steps, "bound_tokens_per_s": bound_steps * batch_size,
        "bound_fraction": row["decode_tokens_per_s"] / (bound_steps * batch_size),
        "bound_fraction_best": row["decode_tokens_per_s_best"] / (bound_steps * batch_size),
        "load_average_1_5_15": [round(x, 2) for x in __import__("os").getloadavg()],
    })
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-size", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--dtype", nargs="+", choices=sorted(common.DTYPES),
                        help="weights and cache dtype (default: bf16 on GPU; fp32 and bf16 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="text tokens after the image")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per case (best and median)")
    parser.add_argument("--recompute-steps", type=int,
                        help="steps of full recomputation to time (default: all for tiny, 8 otherwise; 0: skip)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--decode", nargs="+", choices=("eager", "static", "compiled"), default=["eager"],
                        help="decode paths to time, each case in each (default: eager)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = args.dtype or (["bf16"] if device.type == "cuda" else ["fp32", "bf16"])
    bandwidth = common.memory_read_bandwidth(device)
    rows, eager_tokens = [], {}
    decodes = sorted(args.decode, key=["eager", "static", "compiled"].index)  # eager first: the tokens to match
    for preset in args.preset:
        for dtype_name in dtypes:
            for batch_size in args.batch_size:
                for decode_kind in decodes:
                    rows.append(bench_case(preset, dtype_name, batch_size, args, bandwidth["read_bytes_per_s"],
                                           device, decode_kind, eager_tokens))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress
    print(json.dumps({"bench": "generate", "machine": common.machine(device), "memory_bandwidth": bandwidth,
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
