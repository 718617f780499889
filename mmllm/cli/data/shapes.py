"""Generate the shapes dataset: captioned scenes of coloured shapes and questions about them, in shards.

Writes OUT/{train,val,test_compositional}/captions/ and .../chat/ shards (plus scenes.jsonl per split and
OUT/shapes.json; with --preferences, .../preference/ shards of (question, true answer, wrong answer) pairs). test_compositional scenes each hold a colour-shape pair that train never shows.
"""

from __future__ import annotations

import argparse
import os
import time

from data_pipelines.convert.shapes import generate_shapes
from mmllm.cli.data.options import add_output_arguments, converting
from mmllm.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("--train", type=int, default=8000, help="training scenes (default 8000)")
    parser.add_argument("--val", type=int, default=500, help="validation scenes (default 500)")
    parser.add_argument("--test", type=int, default=500, help="test_compositional scenes (default 500)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes drawing scenes (default: up to 2); the output does not depend on it")
    parser.add_argument("--questions-per-chat", type=int, default=0,
                        help="questions per chat sample; a scene's questions are split over several samples "
                             "(default 0: all of a scene's questions in one conversation)")
    parser.add_argument("--rare-colour", metavar="COLOUR:FRACTION", type=_rare_colour,
                        help="skew the train split: objects of COLOUR drawn FRACTION times as often as the others "
                             "(e.g. purple:0.1; val and test stay balanced), to see a bias report find the gap")
    parser.add_argument("--spurious", metavar="SHAPE:COLOUR:FRACTION", type=_spurious,
                        help="plant a bias in the train split: objects of SHAPE have COLOUR FRACTION of the time "
                             "(e.g. circle:red:0.95; val and test stay balanced); every split's samples name their "
                             "scene's group (`group`: red circle, other circle) and questions about SHAPE carry "
                             "`spurious`, for data.balance, model.group_dro and eval --group-by")
    parser.add_argument("--preferences", action="store_true",
                        help="also write each question as a preference pair (its true answer chosen, a plausible "
                             "wrong one rejected: yes and no swapped, another object's colour, a count off by one) "
                             "in SPLIT/preference/, for model.preference")
    parser.add_argument("--video", type=int, nargs=2, metavar=("TRAIN", "VAL"),
                        help="also write TRAIN and VAL clips of moving shapes (2 s GIFs) with questions one frame "
                             "cannot answer (which way an object moves, which appears first, whether two meet) in "
                             "SPLIT/video/ (data_pipelines.convert.shapes_video)")
    add_output_arguments(parser, "caption and chat")


def _rare_colour(text: str) -> tuple[str, float]:
    from data_pipelines.convert.shapes import COLOURS

    colour, _, fraction = text.partition(":")
    try:
        value = float(fraction)
    except ValueError:
        value = -1.0
    if colour not in COLOURS or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected COLOUR:FRACTION with COLOUR one of {', '.join(COLOURS)} and "
                                         f"FRACTION in [0, 1], got {text!r}")
    return colour, value


def _spurious(text: str) -> tuple[str, str, float]:
    from data_pipelines.convert.shapes import parse_spurious

    try:
        return parse_spurious(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args) -> int:
    start = time.perf_counter()
    with converting():
        generate_shapes(args.out, train=args.train, val=args.val, test=args.test, image_size=args.image_size,
                        seed=args.seed, maxcount=args.shard_size, overwrite=args.overwrite,
                        workers=args.workers, questions_per_chat=args.questions_per_chat,
                        rare_colour=args.rare_colour, spurious=args.spurious, preferences=args.preferences)
    if args.video:
        from data_pipelines.convert.shapes_video import generate_video_split

        if min(args.video) < 0:
            raise UsageError("--video takes two clip counts of 0 or more")
        for split, count in zip(("train", "val"), args.video):
            generate_video_split(args.out, split, count, seed=args.seed, image_size=args.image_size,
                                 maxcount=args.shard_size, overwrite=args.overwrite)
    scenes = args.train + args.val + args.test
    print(f"generated {scenes} scenes in {time.perf_counter() - start:.1f} s")
    return 0
