"""Caption images: one line per image, PATH<TAB>CAPTION, or JSON lines with --json.

IMAGE may be a file, a folder (its images, searched recursively) or a glob pattern ("photos/*.jpg").
Images are captioned in batches of --batch-size, with the instruction the caption data was trained with.
Example: mmllm caption --model models/shapes-tiny data/pictures/ --json
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from mmllm.cli.model_options import add_model_arguments, add_sampling_arguments, load_model, print_stream, sampling
from mmllm.errors import UsageError

ONE_LINE = str.maketrans({"\t": " ", "\n": " ", "\r": " "})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help='print {"image": ..., "caption": ...} per line')
    parser.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per batch (default 16)")
    add_sampling_arguments(parser)


def expand_images(arguments: list[str]) -> list[str]:
    """Files as given; folders -> their image files (recursively, sorted); globs -> their matches (sorted)."""
    paths: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UsageError(f"folder {argument} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif path.is_file():
            paths.append(argument)
        elif glob.has_magic(argument):
            matches = sorted(p for p in glob.glob(argument, recursive=True) if Path(p).is_file())
            if not matches:
                raise UsageError(f"no file matches {argument}")
            paths.extend(matches)
        else:
            raise UsageError(f"image {argument} does not exist")
    return paths


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.stream and args.json:
        raise UsageError("--stream and --json do not mix: a JSON line is printed whole")
    paths = expand_images(args.images)
    vlm = load_model(args)
    options = sampling(args)
    if args.stream:  # one image at a time, its caption printed as it is generated
        for path in paths:
            sys.stdout.write(f"{path}\t")
            print_stream(map(_on_one_line, vlm.stream_caption(path, **options)))
        return 0
    # The batches are made here, so each one's lines are printed as soon as it is done; the API gets one batch.
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start:start + args.batch_size]
        for path, caption in zip(batch, vlm.caption(batch, batch_size=len(batch), **options)):
            print(json.dumps({"image": path, "caption": caption}) if args.json else f"{path}\t{_on_one_line(caption)}",
                  flush=True)
    return 0


def _on_one_line(text: str) -> str:
    """Tabs and line breaks become spaces (character by character, so streamed pieces map the same way)."""
    return text.translate(ONE_LINE)

