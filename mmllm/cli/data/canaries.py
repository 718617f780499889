"""Copy shards with random secrets ("the code is 4 8 1 5 9 2") written into their training text, K secrets at each
repetition count, for a memorisation audit (`mmllm audit memorization`) after training on them.

A caption gets the sentence at its end, a chat its last assistant turn, a document its last line. The new folder's
canaries.json names every secret, its count and the samples that carry it. The originals are left as they are.

Example: mmllm data canaries data/shapes/train/captions --out data/canaried/captions --repeats 1,4,16
"""

from __future__ import annotations

import argparse

from mmllm.cli.data.options import KIND_HELP, shards_kind
from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DIR", help="the shards to copy (a folder, brace pattern or .tar)")
    parser.add_argument("--kind", default=None, choices=("caption", "chat", "text"), help=KIND_HELP)
    parser.add_argument("--out", required=True, metavar="DIR", help="where the new shards and canaries.json go")
    parser.add_argument("--secrets", type=int, default=16, metavar="K",
                        help="secrets per repetition count (16: enough for an interval of each count's mean)")
    parser.add_argument("--repeats", default="1,4,16", metavar="N,N,...",
                        help="how many samples carry each secret (default 1,4,16)")
    parser.add_argument("--digits", type=int, default=6, help="digits per secret (default 6)")
    parser.add_argument("--format", default="the code is {secret}", help="the sentence, with {secret}")
    parser.add_argument("--copies", action="store_true",
                        help="put each secret into one sample and write that sample as many times as the secret "
                             "repeats (duplicates, as a crawl repeats a page; what `mmllm data dedup` removes) "
                             "instead of into that many different samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in --out")


def run(args: argparse.Namespace) -> int:
    from data_pipelines.privacy.canaries import insert_canaries

    args.kind = shards_kind(args.data, args.kind)

    try:
        repeats = [int(count) for count in args.repeats.split(",")]
    except ValueError:
        raise UsageError(f"--repeats {args.repeats!r}: give counts separated by commas, e.g. 1,4,16") from None
    try:
        insert_canaries(args.data, args.kind, args.out, secrets_per_count=args.secrets, repeats=repeats,
                        digits=args.digits, sentence_format=args.format, seed=args.seed, copies=args.copies,
                        overwrite=args.overwrite)
    except (ValueError, FileExistsError) as error:
        raise UsageError(str(error)) from None
    return 0
