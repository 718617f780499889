"""Options shared by the commands that run a model (caption, ask, chat, generate, eval): which model, where,
in what precision, and how new tokens are chosen.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable

MODEL_HELP = (
    "an exported model folder (config.json, model.safetensors, tokenizer.json; read without unpickling "
    "anything, safe to open from anywhere) or a Lightning checkpoint .ckpt written by mmllm fit (a pickle: "
    "loading it can run code, so open only checkpoints you trust; `mmllm export` turns one into a folder)"
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--lora", default=None, metavar="ADAPTER_DIR",
                        help="a LoRA adapter folder on the model (mmllm export of a LoRA run, or PEFT's), merged "
                             "into its weights")
    parser.add_argument("--force", action="store_true",
                        help="with --lora (or a LoRA run's checkpoint): use the adapter even on a base other than the "
                             "one it records having been trained on")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to run (default auto: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="weights' precision (default auto: float32 on cpu, bfloat16 on cuda)")
    parser.add_argument("--quantize", choices=("int8", "int4"), default=None,
                        help="int8 or int4 weights for every linear layer, on the CPU, by the fastest method of that "
                             "precision this machine has (measured, then remembered); a folder from `mmllm export "
                             "--quantize` is quantised as saved")
    parser.add_argument("--quantize-method", default="auto", metavar="NAME",
                        help="auto (the default: the fastest method of the --quantize precision here, even when "
                             "float32 is faster; remembered once told apart from the others, measured again while "
                             "not), auto! (measure again), or one of torch-packed-int8, "
                             "torch-dynamic-int8, torchao-int8-weight-only, torchao-int8-dynamic, torch-packed-int4, "
                             "torchao-int4-weight-only, torchao-int8-dynamic-int4")
    parser.add_argument("--decode", default="auto", choices=("auto", "eager", "static", "compiled"),
                        help="how tokens are decoded: compiled (a static KV cache through torch.compile, CUDA "
                             "graphs on a GPU; compiled once per model and length bucket, kept in ~/.cache/mmllm), "
                             "static, eager (rows leave the batch as they finish); auto (the default): compiled on "
                             "cuda, and in chat on a model compiled before; eager otherwise")


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int | str = 64,
                           stream: bool = True) -> None:
    """--max-new-tokens (a string: the command picks a default per task, as the string says), --temperature,
    --top-k, --top-p, --seed, and --stream unless stream=False."""
    default = max_new_tokens
    max_new_tokens = None if isinstance(max_new_tokens, str) else max_new_tokens
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N",
                        help=f"most tokens to generate (default {default})")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T",
                        help="sampling temperature; 0 (the default) is greedy decoding")
    parser.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K likeliest tokens")
    parser.add_argument("--top-p", type=float, default=None, metavar="P",
                        help="sample among the likeliest tokens holding P of the probability")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="seed for reproducible sampling")
    if stream:
        parser.add_argument("--stream", action="store_true", help="print words as they are generated")


def sampling(args: argparse.Namespace, max_new_tokens: int | None = None) -> dict:
    """The sampling keyword arguments of the Python API from the parsed options."""
    return {
        "max_new_tokens": args.max_new_tokens if args.max_new_tokens is not None else max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
    }


def load_model(args: argparse.Namespace):
    """The model named by --model on --device in --dtype, maybe quantised (mmllm.inference.load: UsageError on a bad
    model); what quantisation chose is said once, on stderr."""
    from mmllm.inference import load

    vlm = load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize,
               quantize_method=args.quantize_method, decode=getattr(args, "decode", "auto"), lora=args.lora,
               force=getattr(args, "force", False))
    if vlm.quantization is not None:
        print(vlm.quantization.summary(), file=sys.stderr)
    return vlm


def print_stream(pieces: Iterable[str], end: str = "\n") -> str:
    """Print text pieces as they come (flushed); return the whole text."""
    shown = []
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
        shown.append(piece)
    sys.stdout.write(end)
    sys.stdout.flush()
    return "".join(shown)
