"""Convert a LLaVA conversation file (JSON list or JSON lines; OpenAI messages rows too) into chat shards.

Multi-turn conversations are kept; rows without an image become text-only chats. Rows with a missing or
unreadable image, or without an assistant turn, are counted and skipped.
"""

from __future__ import annotations

from pathlib import Path

from data_pipelines.from_llava import convert_llava
from data_pipelines.writers import DEFAULT_MAXCOUNT
from mmllm.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("file", help="LLaVA-style .json or .jsonl file")
    parser.add_argument("--images", help="folder the rows' image paths are relative to")
    parser.add_argument("--out", required=True, help="output folder of chat shards")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_MAXCOUNT,
                        help=f"samples per shard (default {DEFAULT_MAXCOUNT})")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in OUT")


def run(args) -> int:
    if not Path(args.file).is_file():
        raise UsageError(f"no such file: {args.file}")
    if args.images is not None and not Path(args.images).is_dir():
        raise UsageError(f"no such image folder: {args.images}")
    try:
        stats = convert_llava(args.file, args.images, args.out, maxcount=args.shard_size, overwrite=args.overwrite)
    except FileExistsError as error:
        raise UsageError(f"{error} (pass --overwrite)") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"{args.file}: {error}") from None
    if stats.written == 0 and stats.skipped:
        raise UsageError(f"no sample written from {args.file}: every row was skipped (is --images right?)")
    return 0
