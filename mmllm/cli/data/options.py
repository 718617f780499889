"""What the `mmllm data` converters share: the output options and how a converter's failures reach the user."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Iterator

from data_pipelines.convert.writers import DEFAULT_MAXCOUNT
from mmllm.errors import UsageError


def add_output_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("--out", required=True, help=f"output folder of {kind} shards")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_MAXCOUNT,
                        help=f"samples per shard (default {DEFAULT_MAXCOUNT})")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in OUT")
    if kind in ("caption", "chat", "text"):
        parser.add_argument("--scrub-pii", action="store_true",
                            help="replace e-mail addresses, phone numbers, card numbers, IBANs, IP addresses and "
                                 "secrets (keys, tokens, passwords) in the text by <EMAIL>, <PHONE>, ... and count "
                                 "them (needs mmllm[privacy])")
        parser.add_argument("--pii-region", default="US", metavar="CC[,CC]",
                            help="countries whose phone numbers may be written without a country code "
                                 "(default US; GB,DE,...; '' for international numbers only)")
    if kind in ("caption", "chat"):
        parser.add_argument("--blur-faces", action="store_true",
                            help="blur the faces OpenCV's bundled detectors find in each image before writing it, "
                                 "and count the images changed (needs mmllm[privacy])")


def face_blurrer(args: argparse.Namespace):
    """The writer's blur function for --blur-faces (None without it); a missing library exits 2 in one line."""
    if not getattr(args, "blur_faces", False):
        return None
    from data_pipelines.privacy.faces import FaceBlurrer

    try:
        return FaceBlurrer().blur_encoded
    except ImportError as error:
        raise UsageError(str(error)) from None


def scrubber(args: argparse.Namespace):
    """The writer's scrub function for --scrub-pii (None without it); a missing library exits 2 in one line."""
    if not getattr(args, "scrub_pii", False):
        return None
    from data_pipelines.privacy.pii import PIIScrubber

    try:
        return PIIScrubber(region=args.pii_region).scrub
    except (ImportError, ValueError) as error:
        raise UsageError(str(error)) from None


@contextmanager
def converting(source: str | None = None) -> Iterator[None]:
    """A converter's input mistakes as one-line usage errors (named after `source` when given)."""
    try:
        yield
    except FileExistsError as error:
        raise UsageError(f"{error} (pass --overwrite)") from None
    except (FileNotFoundError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"{source}: {error}" if source else str(error)) from None


def require_samples(stats, source: str, hint: str = "") -> None:
    """Exit 2 when every row of the input was skipped (nothing was written)."""
    if stats.written == 0 and stats.skipped:
        raise UsageError(f"no sample written from {source}: every row was skipped{hint}")


KIND_HELP = "the shards' kind: caption, chat or text (default: read from the shards' first samples)"


def shards_kind(path, kind: str | None) -> str:
    """--kind checked against the shards, or detected from them when left out; UsageError in one line."""
    from data_pipelines.read.shards import resolve_kind

    try:
        return resolve_kind(path, kind)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
