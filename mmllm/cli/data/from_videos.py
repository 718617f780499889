"""Convert clips and the questions about them (LLaVA `conversations`, OpenAI `messages`, or `question` and `answer`,
with a `video` path per row) into chat shards holding each clip beside its chat.

Rows without a conversation, with a missing clip, a clip that is not mp4, webm or gif or that does not decode are
counted by reason and skipped. Needs PyAV (`pip install 'mmllm[video]'`).
Example: mmllm data from-videos questions.jsonl --videos clips --out data/clips
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from data_pipelines.convert.from_videos import convert_videos
from mmllm.cli.data.options import add_output_arguments, converting, require_samples
from mmllm.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("file", metavar="FILE", help="a .json or .jsonl file of rows, each naming its `video`")
    parser.add_argument("--videos", required=True, help="folder the rows' clip paths are relative to")
    add_output_arguments(parser, "video chat")


def run(args) -> int:
    if not Path(args.file).is_file():
        raise UsageError(f"no such file: {args.file}")
    if not Path(args.videos).is_dir():
        raise UsageError(f"no such clip folder: {args.videos}")
    if importlib.util.find_spec("av") is None:
        raise UsageError("reading clips needs PyAV: pip install 'mmllm[video]'")
    with converting(args.file):
        stats = convert_videos(args.file, args.videos, args.out, maxcount=args.shard_size, overwrite=args.overwrite)
    require_samples(stats, args.file, " (does each row name its `video`? is --videos right?)")
    return 0
