"""Convert a folder of images and a captions file (JSON lines or CSV of file, caption) into caption shards.

Several rows for the same image are grouped: the first caption is KEY.txt, all of them go to KEY.json as
references. Rows whose image is missing or unreadable are counted and skipped.
"""

from __future__ import annotations

from pathlib import Path

from data_pipelines.from_folder import convert_folder
from data_pipelines.writers import DEFAULT_MAXCOUNT
from mmllm.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="folder the captions file's image paths are relative to")
    parser.add_argument("--captions", required=True,
                        help='.jsonl ({"file"|"image", "caption"|"text"}) or .csv with those columns')
    parser.add_argument("--out", required=True, help="output folder of caption shards")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_MAXCOUNT,
                        help=f"samples per shard (default {DEFAULT_MAXCOUNT})")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in OUT")


def run(args) -> int:
    if not Path(args.folder).is_dir():
        raise UsageError(f"no such image folder: {args.folder}")
    if not Path(args.captions).is_file():
        raise UsageError(f"no such captions file: {args.captions}")
    try:
        stats = convert_folder(args.folder, args.captions, args.out, maxcount=args.shard_size,
                               overwrite=args.overwrite)
    except FileExistsError as error:
        raise UsageError(f"{error} (pass --overwrite)") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise UsageError(str(error)) from None
    if stats.written == 0 and stats.skipped:
        raise UsageError(f"no sample written from {args.captions}: every row was skipped")
    return 0
