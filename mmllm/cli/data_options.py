"""What the `mmllm data` converters share: the output options and how a converter's failures reach the user."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Iterator

from data_pipelines.writers import DEFAULT_MAXCOUNT
from mmllm.errors import UsageError


def add_output_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("--out", required=True, help=f"output folder of {kind} shards")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_MAXCOUNT,
                        help=f"samples per shard (default {DEFAULT_MAXCOUNT})")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in OUT")


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
