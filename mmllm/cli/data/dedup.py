"""Find exact and near-duplicate samples across shards and write the shards without them.

Text: MinHash over character 5-grams (Jaccard >= --text-threshold); images: 64-bit perceptual hashes within
--image-distance bits. A caption or chat duplicates another when both its image and its text do (--by both), or
either (--by image, --by text). Each cluster keeps its first sample. The report lists the clusters. --scrub-pii
scrubs the text of the shards written, as the converters do (existing shards have no other way through it).

Example: mmllm data dedup data/web/train --out data/web/train-dedup --report dedup.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmllm.cli.data.options import KIND_HELP, shards_kind
from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DIR", help="the shards (a folder, brace pattern or .tar)")
    parser.add_argument("--kind", default=None, choices=("caption", "chat", "text"), help=KIND_HELP)
    parser.add_argument("--out", required=True, metavar="DIR", help="where the deduplicated shards go")
    add_duplicate_arguments(parser)
    parser.add_argument("--report", default=None, metavar="FILE.json", help="write the clusters as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    parser.add_argument("--scrub-pii", action="store_true",
                        help="also replace personal data and secrets in the text written, as the converters' "
                             "--scrub-pii does (needs mmllm[privacy])")
    parser.add_argument("--pii-region", default="US", metavar="CC[,CC]",
                        help="countries whose phone numbers may be written without a country code "
                             "(default US; GB,DE,...; '' for international numbers only)")


def add_duplicate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", choices=("both", "image", "text"), default="both",
                        help="what makes a duplicate: image and text (default), either one alone")
    parser.add_argument("--text-threshold", type=float, default=0.8, metavar="J",
                        help="Jaccard similarity of character 5-grams from which texts match (default 0.8)")
    parser.add_argument("--image-distance", type=int, default=4, metavar="BITS",
                        help="perceptual-hash bits two matching images may differ in, 0-7 (default 4)")


def find(args: argparse.Namespace, samples):
    """The duplicate report of `samples` (read from args.data) under the options; user mistakes as UsageError."""
    from data_pipelines.privacy.dedup import find_duplicates

    try:
        return find_duplicates(samples, by=args.by, text_threshold=args.text_threshold,
                               image_distance=args.image_distance)
    except (ImportError, ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    from data_pipelines.read.bad_samples import BadSampleHandler
    from data_pipelines.privacy.dedup import write_deduplicated
    from data_pipelines.read.shards import read_samples
    from mmllm.cli.data.options import scrubber

    args.kind = shards_kind(args.data, args.kind)

    scrub = scrubber(args)  # before the search: a missing library is reported first
    handler = BadSampleHandler()
    report = find(args, read_samples(args.data, args.kind, handler, decode=False))
    largest = max(map(len, report.clusters), default=0)
    print(f"{report.duplicates} of {report.samples} samples are duplicates, in {len(report.clusters)} clusters "
          f"(largest {largest}); pairs: {report.text_pairs} by text, {report.image_pairs} by image")
    if handler.total:
        print(handler.summary(), file=sys.stderr)
    try:
        write_deduplicated(args.data, args.out, report.removed(), overwrite=args.overwrite, scrub=scrub)
    except FileExistsError as error:
        raise UsageError(f"{error} (pass --overwrite)") from None
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        print(f"wrote {args.report}", file=sys.stderr)
    return 0
