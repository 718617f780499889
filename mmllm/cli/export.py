"""Export a training checkpoint as a model folder (config.json, model.safetensors, tokenizer.json).

Example: mmllm export runs/shapes-tiny/checkpoints/last.ckpt --out models/shapes-tiny
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a Lightning checkpoint written by mmllm fit (.ckpt)")
    parser.add_argument("--out", required=True, help="the model folder to write")


def run(args: argparse.Namespace) -> int:
    from mmllm.checkpoint_export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} to {out}")
    return 0
