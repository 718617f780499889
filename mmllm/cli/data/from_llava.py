"""Convert a LLaVA conversation file (JSON list or JSON lines; OpenAI messages rows too) into chat shards.

Multi-turn conversations are kept; rows without an image become text-only chats. Rows with a missing or
unreadable image, or without an assistant turn, are counted and skipped.
"""

from __future__ import annotations

from pathlib import Path

from data_pipelines.convert.from_llava import convert_llava
from mmllm.cli.data.options import add_output_arguments, converting, face_blurrer, scrubber, require_samples
from mmllm.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("file", help="LLaVA-style .json or .jsonl file")
    parser.add_argument("--images", help="folder the rows' image paths are relative to")
    add_output_arguments(parser, "chat")


def run(args) -> int:
    if not Path(args.file).is_file():
        raise UsageError(f"no such file: {args.file}")
    if args.images is not None and not Path(args.images).is_dir():
        raise UsageError(f"no such image folder: {args.images}")
    scrub, blur = scrubber(args), face_blurrer(args)  # before reading anything: a missing library is said first
    with converting(args.file):
        stats = convert_llava(args.file, args.images, args.out, maxcount=args.shard_size, overwrite=args.overwrite,
                              scrub=scrub, blur=blur)
    require_samples(stats, args.file, " (is --images right?)")
    return 0
