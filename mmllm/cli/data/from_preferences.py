"""Convert preference pairs in TRL's columns (prompt, chosen, rejected, images) from a JSON lines file into shards.

Each row becomes one preference sample: the prompt's chat turns, the chosen and the rejected answer, and its image
if it names one (TRL's `images` list, paths relative to --images). Rows without a prompt or an answer, with two equal
answers, a missing or unreadable image or more than one image are counted by reason and skipped.
Example: mmllm data from-preferences pairs.jsonl --images pictures --out data/prefs
"""

from __future__ import annotations

from pathlib import Path

from data_pipelines.convert.from_preferences import convert_preferences
from mmllm.cli.data.options import add_output_arguments, converting, require_samples
from mmllm.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("file", metavar="FILE.jsonl", help="one TRL preference row per line")
    parser.add_argument("--images", help="folder the rows' image paths are relative to")
    add_output_arguments(parser, "preference")


def run(args) -> int:
    if not Path(args.file).is_file():
        raise UsageError(f"no such file: {args.file}")
    if args.images is not None and not Path(args.images).is_dir():
        raise UsageError(f"no such image folder: {args.images}")
    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be at least 1, got {args.shard_size}")
    with converting(args.file):
        stats = convert_preferences(args.file, args.images, args.out, maxcount=args.shard_size,
                                    overwrite=args.overwrite)
    require_samples(stats, args.file, " (does each row have prompt, chosen and rejected? is --images right?)")
    return 0
