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
    unreadable: list[str] = []  # "PATH (reason)" of each image that could not be read; the others are captioned
    if args.stream:  # one image at a time, its caption printed as it is generated
        for path in paths:
            image = _read(path, unreadable)
            if image is not None:
                sys.stdout.write(f"{path}\t")
                print_stream(map(_on_one_line, vlm.stream_caption(image, **options)))
    else:
        # The batches are made here, so each one's lines are printed as soon as it is done; the API gets one batch.
        for start in range(0, len(paths), args.batch_size):
            read = [(path, _read(path, unreadable)) for path in paths[start:start + args.batch_size]]
            batch = [(path, image) for path, image in read if image is not None]
            if not batch:
                continue
            captions = vlm.caption([image for _, image in batch], batch_size=len(batch), **options)
            for (path, _), caption in zip(batch, captions):
                print(json.dumps({"image": path, "caption": caption}) if args.json
                      else f"{path}\t{_on_one_line(caption)}", flush=True)
    if unreadable:  # said once at the end, non-zero, so a script notices; every readable image was captioned
        captioned = f", the other {len(paths) - len(unreadable)} captioned" if len(unreadable) < len(paths) else ""
        raise UsageError(f"{len(unreadable)} of {len(paths)} images unusable{captioned}: {'; '.join(unreadable)}")
    return 0


def _read(path: str, unreadable: list[str]):
    """The image at `path` as the model reads it, or None with "PATH (reason)" added to `unreadable`."""
    from mmllm.inference import to_pil

    try:
        return to_pil(path)
    except UsageError as error:
        reason = str(error).removeprefix("unusable image: ")
        unreadable.append(reason if path in reason else f"{path} ({reason})")
        return None


def _on_one_line(text: str) -> str:
    """Tabs and line breaks become spaces (character by character, so streamed pieces map the same way)."""
    return text.translate(ONE_LINE)

