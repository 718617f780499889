"""Continue a plain-text prompt (no chat template, no image) and print the continuation.

A check of the language model alone. Example: mmllm generate --model models/shapes-tiny "a red circle"
"""

from __future__ import annotations

import argparse

from mmllm.cli.model_options import add_model_arguments, add_sampling_arguments, load_model, print_stream, sampling


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", metavar="PROMPT", help="the text to continue, in quotes")
    add_model_arguments(parser)
    add_sampling_arguments(parser)


def run(args: argparse.Namespace) -> int:
    vlm = load_model(args)
    if args.stream:
        print_stream(vlm.stream_generate(args.prompt, **sampling(args)))
    else:
        print(vlm.generate(args.prompt, **sampling(args)))
    return 0
