"""Training-step throughput of a preset: steps/s, tokens/s, samples/s, peak memory and MFU; prints one JSON object.

    python bench/train_step.py                         # tiny (the CPU demo's shape) and small, fp32 and bf16-mixed,
                                                       # eager and torch.compile
    python bench/train_step.py --preset tiny --precision fp32 --compile off --steps 20
    python bench/train_step.py --preset small --device cuda --batch-size 16 --text-tokens 512 --sdpa flash
    python bench/train_step.py --preset tiny --precision fp32 --compile off --images-per-sample 8   # a clip's step
    python bench/train_step.py --demo --fit --nanovlm ../nanoVLM --out bench/results/DATE-train-step-demo.json
                                                       # the shapes demo's own step, lever by lever
                                                       # (bench/demo_step.py), beside nanoVLM's modules

One step = zero_grad, forward with labels (autocast for bf16-mixed), backward, gradient clipping at 1.0 (as the
demo config), AdamW step: what the Lightning Trainer does per batch, without its loop. Every configuration
runs in a child process, so its peak memory is its own and a failing torch.compile becomes an "error" string
in the JSON instead of a crash. MFU = model FLOPs per step (formula in bench_common.py) / step time / the
peak matmul FLOP/s measured in that same child on the same device and dtype.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_common as common  # noqa: E402

from mmllm.config import VLMConfig  # noqa: E402
from mmllm.model import VLM  # noqa: E402

# Per preset: the shape of a typical batch. tiny = the CPU demo (configs/shapes-tiny.yaml: batch 32, 64 px
# images -> 16 image tokens, ~60-90 text tokens, a 512-token shapes tokenizer); small is sized so one fp32
# step takes seconds on two CPU cores (use --batch-size/--text-tokens for GPU-sized batches).
DEFAULT_SHAPES = {
    "tiny": {"batch_size": 32, "text_tokens": 80, "vocab_size": 512},
    "small": {"batch_size": 1, "text_tokens": 64, "vocab_size": None},
    "base": {"batch_size": 1, "text_tokens": 64, "vocab_size": None},
}


def synthetic_batch(config: VLMConfig, batch_size: int, text_tokens: int, device: torch.device, seed: int = 0,
                    images_per_sample: int = 1):
    """`images_per_sample` images per sample (a clip's frames: 8), their tokens_per_image placeholders each first,
    then random text, all text supervised."""
    g = torch.Generator().manual_seed(seed)
    tpi = config.tokens_per_image * images_per_sample
    special = {config.image_token_id, config.pad_token_id, *config.eos_token_ids}
    low = max(special) + 1
    text = torch.randint(low, config.lm.vocab_size, (batch_size, text_tokens), generator=g)
    images = torch.full((batch_size, tpi), config.image_token_id)
    input_ids = torch.cat([images, text], dim=1)  # (B, images x tokens per image + text)
    labels = input_ids.clone()
    labels[:, :tpi] = -100
    size = config.vision.image_size
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "pixel_values": torch.randn(batch_size * images_per_sample, 3, size, size, generator=g),
        "image_counts": torch.full((batch_size,), images_per_sample, dtype=torch.long),
    }
    return {k: v.to(device) for k, v in batch.items()}


def build_config(preset: str, vocab_size: int | None) -> VLMConfig:
    config = VLMConfig.from_preset(preset)
    if vocab_size is not None:
        config.lm.vocab_size = vocab_size
    return config.with_tokenizer_ids(config.lm.vocab_size, image_token_id=0, pad_token_id=1, eos_token_ids=[2])


def sdpa_context(kind: str):
    if kind == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}[kind]
    return sdpa_kernel(backend)


def run_one(args: argparse.Namespace) -> dict:
    """Time one (preset, precision, compile) configuration in this process."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rss_before = common.max_rss_bytes()
    shape = {**DEFAULT_SHAPES[args.preset]}
    for key in ("batch_size", "text_tokens", "vocab_size"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    torch.manual_seed(0)
    config = build_config(args.preset, shape["vocab_size"])
    model = VLM(config).to(device).train()
    batch = synthetic_batch(config, shape["batch_size"], shape["text_tokens"], device,
                            images_per_sample=args.images_per_sample)
    B, T = batch["input_ids"].shape
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                                  fused=args.adamw == "fused", foreach=args.adamw == "foreach")
    mixed = args.precision == "bf16-mixed"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if mixed else contextlib.nullcontext()
    if args.compile == "blocks":
        model.compile_blocks()  # regional: one graph per block kind (model.compile: blocks in training)
    if args.activation_checkpointing:
        model.set_activation_checkpointing(True)
    forward = torch.compile(model) if args.compile == "on" else model

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast, sdpa_context(args.sdpa):
            loss = forward(**batch, loss_chunk=args.loss_chunk).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup_start = time.perf_counter()
    for _ in range(args.warmup):
        step()  # torch.compile compiles here, outside the timed steps
    common.synchronize(device)
    warmup_s = time.perf_counter() - warmup_start

    cpu_start = time.process_time()
    wall = common.timed(step, device, args.steps)
    cpu_s = time.process_time() - cpu_start
    times = common.summary(wall)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step()
        key = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile), file=sys.stderr)

    peak = common.peak_matmul_flops(device, torch.bfloat16 if mixed else torch.float32)
    step_flops = common.train_flops(config, B, T, n_images=B * args.images_per_sample)
    best, median = times["best_s"], times["median_s"]
    if device.type == "cuda":
        memory = {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "memory_kind": "cuda max allocated"}
    else:
        memory = {"peak_memory_bytes": common.max_rss_bytes() - rss_before,
                  "memory_kind": "growth of the process's peak RSS (model, optimizer, activations, matmul probe)"}
    return {
        "preset": args.preset, "precision": args.precision, "compile": args.compile, "sdpa": args.sdpa,
        "activation_checkpointing": args.activation_checkpointing,
        "adamw": args.adamw, "loss_chunk": args.loss_chunk, "batch_size": B, "seq_len": T,
        "images_per_sample": args.images_per_sample,
        "image_tokens_per_sample": config.tokens_per_image * args.images_per_sample,
        "vocab_size": config.lm.vocab_size, "params": model.num_parameters()["total"],
        "steps_per_s": 1 / median, "steps_per_s_best": 1 / best,
        "tokens_per_s": B * T / median, "samples_per_s": B / median,
        "step_time": times, "cpu_s_per_step": cpu_s / args.steps, "warmup_s": warmup_s,
        "flops_per_step": step_flops, "achieved_flops": step_flops / median,
        "peak_matmul": peak, "mfu": step_flops / median / peak["peak_flops"],
        "mfu_best": step_flops / best / peak["peak_flops"], **memory,
        "load_average_1_5_15": common.machine(device)["load_average_1_5_15"],
    }


def run_child(args: argparse.Namespace, preset: str, precision: str, compile_: str, images: int = 1) -> dict:
    """run_one in a fresh process; a crash or timeout becomes {"error": ...}."""
    command = [sys.executable, __file__, "--one", "--preset", preset, "--precision", precision, "--compile", compile_,
               "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--sdpa", args.sdpa, "--adamw", args.adamw, "--images-per-sample", str(images)]
    for key in ("batch_size", "text_tokens", "vocab_size", "profile", "threads", "loss_chunk"):
        value = getattr(args, key)
        if value is not None:
            command += [f"--{key.replace('_', '-')}", str(value)]
    if args.activation_checkpointing:
        command.append("--activation-checkpointing")
    row = {"preset": preset, "precision": precision, "compile": compile_}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {args.timeout} s (warm-up/compile included)"}
    if args.profile:
        sys.stderr.write(done.stderr)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {**row, "error": lines[-1] if lines else f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["tiny", "small"])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16-mixed"], choices=["fp32", "bf16-mixed"])
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on", "blocks"],
                        help="off, on (the whole model), blocks (each block, regionally); warmup_s holds the compile")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute each block's activations in the backward pass")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, help="default: per preset (tiny 32, small 1)")
    parser.add_argument("--text-tokens", type=int, help="text tokens per sample after its image (default: 80 / 64)")
    parser.add_argument("--images-per-sample", type=int, nargs="+", default=[1],
                        help="images per sample, one row each: 8 is a clip's frames at data.video's default")
    parser.add_argument("--vocab-size", type=int, help="default: tiny 512 (the demo tokenizer), else the preset's")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--sdpa", default="default", choices=["default", "flash", "efficient", "math", "cudnn"])
    parser.add_argument("--adamw", default="foreach", choices=["foreach", "fused", "for-loop"])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--loss-chunk", type=int,
                        help="the loss from supervised tokens only, this many at a time (model.loss_chunk); "
                             "flops_per_step still counts the head on every token")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--profile", type=int, help="print the top-N ops of one profiled step to stderr")
    parser.add_argument("--demo", action="store_true",
                        help="the shapes demo's own step from configs/shapes-tiny.yaml, lever by lever (bench/demo_step.py)")
    parser.add_argument("--data", type=Path, default=Path("data/shapes"),
                        help="--demo: the shapes data (made with the demo's commands when missing)")
    parser.add_argument("--nanovlm", type=Path, help="--demo: a nanoVLM checkout whose modules run at the same shapes")
    parser.add_argument("--fit", action="store_true", help="--demo: also time whole `mmllm fit` runs, before and after")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child mode: one configuration
    args = parser.parse_args()

    if args.one:
        args.preset, args.precision, args.compile = args.preset[0], args.precision[0], args.compile[0]
        args.images_per_sample = args.images_per_sample[0]
        print(json.dumps(run_one(args)))
        return
    if args.demo:
        import demo_step

        data = demo_step.ensure_data(args.data.resolve())
        report = {"bench": "train_step --demo", "config": "configs/shapes-tiny.yaml",
                  "machine": common.machine(torch.device("cpu")),
                  "rows": demo_step.demo_rows(data, args.nanovlm, args.fit)}
        common.write_report(report, args.out)
        return
    rows = []
    for preset in args.preset:
        for precision in args.precision:
            for compile_ in args.compile:
                for images in args.images_per_sample:
                    rows.append(run_child(args, preset, precision, compile_, images))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress
    common.write_report({"bench": "train_step", "machine": common.machine(torch.device(args.device)), "rows": rows},
                        args.out)


if __name__ == "__main__":
    main()
