"""Export a training checkpoint or a model folder: as an mmllm model folder (config.json, model.safetensors,
tokenizer.json), or as a transformers Idefics3 folder (`--format hf`, mmllm.hf_idefics3) that
AutoModelForImageTextToText and AutoProcessor load without trust_remote_code.

Examples: mmllm export runs/shapes-tiny/checkpoints/last.ckpt --out models/shapes-tiny
          mmllm export models/smolvlm-tuned --format hf --out hf/smolvlm-tuned
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT|MODEL_DIR",
                        help="a Lightning checkpoint written by mmllm fit (.ckpt), or a model folder (--format hf)")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--format", choices=("mmllm", "hf"), default="mmllm",
                        help="mmllm: a model folder (default); hf: a transformers Idefics3 folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model in OUT (it stays intact if the export fails half-way)")


def run(args: argparse.Namespace) -> int:
    from mmllm.model_folder import MODEL_FOLDER_FILES

    taken = [name for name in MODEL_FOLDER_FILES if (Path(args.out) / name).exists()]
    if taken and not args.overwrite:
        raise UsageError(f"{args.out} already holds a model ({', '.join(taken)}); pass --overwrite to replace it")
    if args.format == "hf":
        return export_hf(Path(args.checkpoint), Path(args.out))
    if Path(args.checkpoint).is_dir():
        raise UsageError(f"{args.checkpoint} is a model folder already; export it with --format hf")
    from mmllm.checkpoint_export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} to {out}")
    return 0


def export_hf(source: Path, out: Path) -> int:
    from mmllm.checkpoint_export import model_from_checkpoint
    from mmllm.hf_idefics3 import export_idefics3
    from mmllm.model_folder import load_model_folder

    load = load_model_folder if source.is_dir() else model_from_checkpoint
    model, tokenizer, config = load(source)
    export_idefics3(model, tokenizer, config, out)
    print(f"exported {source} to {out} (transformers Idefics3: AutoModelForImageTextToText, AutoProcessor)")
    return 0
