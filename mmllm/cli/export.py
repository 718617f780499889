"""Export a training checkpoint as a model folder (config.json, model.safetensors, tokenizer.json).

Example: mmllm export runs/shapes-tiny/checkpoints/last.ckpt --out models/shapes-tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a Lightning checkpoint written by mmllm fit (.ckpt)")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model in OUT (it stays intact if the export fails half-way)")


def run(args: argparse.Namespace) -> int:
    from mmllm.checkpoint_export import export_checkpoint
    from mmllm.model_folder import MODEL_FOLDER_FILES

    taken = [name for name in MODEL_FOLDER_FILES if (Path(args.out) / name).exists()]
    if taken and not args.overwrite:
        raise UsageError(f"{args.out} already holds a model ({', '.join(taken)}); pass --overwrite to replace it")
    out = export_checkpoint(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} to {out}")
    return 0
