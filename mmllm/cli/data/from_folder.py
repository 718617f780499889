"""Convert a folder of images and a captions file (JSON lines or CSV of file, caption) into caption shards.

Several rows for the same image are grouped: the first caption is KEY.txt, all of them go to KEY.json as
references. Rows whose image is missing or unreadable are counted and skipped.
"""

from __future__ import annotations

from pathlib import Path

from data_pipelines.convert.from_folder import convert_folder
from mmllm.cli.data.options import add_output_arguments, converting, face_blurrer, scrubber, require_samples
from mmllm.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="folder the captions file's image paths are relative to")
    parser.add_argument("--captions", required=True,
                        help='.jsonl ({"file"|"image", "caption"|"text"}) or .csv with those columns')
    add_output_arguments(parser, "caption")


def run(args) -> int:
    if not Path(args.folder).is_dir():
        raise UsageError(f"no such image folder: {args.folder}")
    if not Path(args.captions).is_file():
        raise UsageError(f"no such captions file: {args.captions}")
    scrub, blur = scrubber(args), face_blurrer(args)  # before reading anything: a missing library is said first
    with converting():
        stats = convert_folder(args.folder, args.captions, args.out, maxcount=args.shard_size,
                               overwrite=args.overwrite, scrub=scrub, blur=blur)
    require_samples(stats, args.captions)
    return 0
