"""Convert plain text files (or folders of .txt/.md files) into text shards of documents.

Blank-line-separated paragraphs are grouped into documents of about --doc-chars characters (or one
document per file with --per-file). Invalid UTF-8 bytes are replaced and the files counted.
"""

from __future__ import annotations

from data_pipelines.convert.from_text import DEFAULT_DOC_CHARS, convert_text
from mmllm.cli.data.options import add_output_arguments, converting, scrubber


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="text files or folders of them")
    parser.add_argument("--doc-chars", type=int, default=DEFAULT_DOC_CHARS,
                        help=f"target document length in characters (default {DEFAULT_DOC_CHARS})")
    parser.add_argument("--per-file", action="store_true", help="one document per file")
    add_output_arguments(parser, "text")


def run(args) -> int:
    scrub = scrubber(args)  # before reading anything: a missing library is said first
    with converting():
        convert_text(args.files, args.out, doc_chars=args.doc_chars, per_file=args.per_file,
                     maxcount=args.shard_size, overwrite=args.overwrite, scrub=scrub)
    return 0
