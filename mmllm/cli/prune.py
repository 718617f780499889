"""Prune a model's language model: cut the least important attention heads, MLP channels and whole layers,
measured on calibration shards, and write a smaller model folder that every command loads.

Importance is activation-based by default (what each head or channel adds to the residual stream on the
calibration samples) or gradient-based (--importance gradient: |w * dL/dw| summed per head or channel); layers
go by how little they turn the residual stream (see mmllm.compress.pruning). Fine-tune the result as usual:
`mmllm fit --config ... --model.init_from OUT`.

Example: mmllm prune models/shapes-tiny --data data/shapes/train/chat --attention-heads 0.33 --mlp-channels 0.3
             --out models/shapes-tiny-pruned
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from mmllm.cli.data.options import KIND_HELP, shards_kind
from mmllm.errors import UsageError

KINDS = ("chat", "caption", "text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="the model folder to prune")
    parser.add_argument("--out", required=True, help="the folder to write the pruned model to")
    parser.add_argument("--data", required=True, metavar="SHARDS",
                        help="calibration shards (a folder, a shard or a brace pattern) of the kind --kind says")
    parser.add_argument("--kind", choices=KINDS, default=None, help=KIND_HELP)
    parser.add_argument("--attention-heads", type=float, default=0.0, metavar="F",
                        help="share of query heads to cut, the same number under each key/value head (default 0)")
    parser.add_argument("--mlp-channels", type=float, default=0.0, metavar="F",
                        help="share of MLP channels to cut in every layer (default 0)")
    parser.add_argument("--layers", type=int, default=0, metavar="N", help="whole decoder layers to cut (default 0)")
    parser.add_argument("--importance", choices=("activation", "gradient"), default="activation",
                        help="how heads and channels are ranked (default activation)")
    parser.add_argument("--samples", type=int, default=256, metavar="N", help="calibration samples (default 256)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in OUT")


def run(args: argparse.Namespace) -> int:
    from mmllm.compress.pruning import check_shares, lm_parameters, measure_importance, plan, prune
    from mmllm.formats.model_folder import CONFIG_FILE, load_model_folder, save_model_folder

    if (Path(args.out) / CONFIG_FILE).exists() and not args.overwrite:
        raise UsageError(f"{args.out} already holds a model; pass --overwrite to replace it")
    if args.samples < 1 or args.batch_size < 1:
        raise UsageError("--samples and --batch-size must be at least 1")
    args.kind = shards_kind(args.data, args.kind)
    if not Path(args.model).is_dir():
        raise UsageError(f"{args.model} is not a model folder (export a checkpoint with `mmllm export` first)")
    model, tokenizer, config = load_model_folder(args.model)
    model.float()
    check_shares(config, args.attention_heads, args.mlp_channels, args.layers)  # before any data is read
    batches = list(calibration_batches(model, tokenizer, args))
    importance = measure_importance(model, batches, args.importance)
    keep = plan(config, importance, args.attention_heads, args.mlp_channels, args.layers)
    pruned = prune(model, keep)
    save_model_folder(pruned, tokenizer, args.out)
    before, after = lm_parameters(model), lm_parameters(pruned)
    c, p = config.lm, pruned.config.lm
    print(f"pruned {args.model} to {args.out} on {importance.tokens} calibration tokens ({args.importance}): "
          f"layers {c.n_layers} -> {p.n_layers}, query heads {c.n_heads} -> {p.n_heads}, MLP channels "
          f"{c.mlp_dim} -> {p.mlp_dim}; LM parameters {before / 1e6:.2f}M -> {after / 1e6:.2f}M "
          f"({1 - after / before:.1%} fewer)")
    return 0


def calibration_batches(model, tokenizer, args: argparse.Namespace):
    """Training-encoded batches (right padding, labels) of the first --samples samples of --data."""
    from data_pipelines.batching import collate
    from data_pipelines.read.bad_samples import BadSampleHandler
    from data_pipelines.read.shards import read_samples
    from mmllm.processing import processor_for

    processor = processor_for(model.config, tokenizer)
    handler = BadSampleHandler()
    try:
        samples = list(itertools.islice(read_samples(args.data, args.kind, handler), args.samples))
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    if handler.total:
        print(handler.summary(), file=sys.stderr)
    encoded = []
    for sample in samples:
        try:
            encoded.append(processor.encode_sample(sample))
        except ValueError:
            continue  # nothing supervised or too long: no loss to measure on
    if not encoded:
        raise UsageError(f"no usable {args.kind} sample in {args.data}")
    for start in range(0, len(encoded), args.batch_size):
        batch = collate(encoded[start:start + args.batch_size], pad_id=model.config.pad_token_id, padding_side="right")
        if batch.get("pixel_values") is not None:
            batch["pixel_values"] = batch["pixel_values"].float()
        yield batch
