"""Convert (source, target) pairs in a JSON lines file into text-only chat shards for sequence-to-sequence learning.

Each row becomes one chat: the user turn is --template with {source} replaced by the row's --source-field, the
assistant turn is its --target-field, so the assistant-only loss trains the target given the source. Rows with a
missing or empty field, a line that is not UTF-8 or not JSON, or a pair over --max-length characters are counted and
skipped; the rows' other fields (an id, a program name) are kept in each sample's JSON.
Example: mmllm data from-pairs pairs.jsonl --source-field en --target-field de \\
             --template "Translate to German: {source}" --out data/en-de
"""

from __future__ import annotations

from pathlib import Path

from data_pipelines.convert.from_pairs import SOURCE_SLOT, convert_pairs
from mmllm.cli.data.options import add_output_arguments, converting, require_samples, scrubber
from mmllm.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("file", metavar="FILE.jsonl", help="one JSON object per line holding both fields")
    parser.add_argument("--source-field", required=True, metavar="F", help="the field read as the source")
    parser.add_argument("--target-field", required=True, metavar="G", help="the field the model learns to write")
    parser.add_argument("--template", default=SOURCE_SLOT,
                        help="the user turn, with {source} where the source goes (default: the source alone)")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="skip pairs whose user turn and target together exceed N characters")
    add_output_arguments(parser, "chat")


def run(args) -> int:
    if not Path(args.file).is_file():
        raise UsageError(f"no such file: {args.file}")
    if not args.source_field.strip() or not args.target_field.strip():
        raise UsageError("--source-field and --target-field must name a field")
    if args.source_field == args.target_field:
        raise UsageError(f"--source-field and --target-field are both {args.source_field!r}")
    if args.template.count(SOURCE_SLOT) != 1:
        raise UsageError(f"--template must contain {SOURCE_SLOT} exactly once, got {args.template!r}")
    if args.max_length is not None and args.max_length < 1:
        raise UsageError(f"--max-length must be at least 1, got {args.max_length}")
    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be at least 1, got {args.shard_size}")
    if args.blur_faces:
        raise UsageError("--blur-faces: pairs have no images")
    scrub = scrubber(args)  # before reading anything: a missing library is said first
    with converting(args.file):
        stats = convert_pairs(args.file, args.out, source_field=args.source_field, target_field=args.target_field,
                              template=args.template, max_length=args.max_length, maxcount=args.shard_size,
                              overwrite=args.overwrite, scrub=scrub)
    require_samples(stats, args.file, f" (are --source-field {args.source_field} and --target-field "
                                      f"{args.target_field} right?)")
    return 0
