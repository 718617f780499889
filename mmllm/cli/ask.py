"""Ask a question about an image and print the answer.

With --json the answer is one JSON object {"image", "question", "answer"}.

Example: mmllm ask --model models/shapes-tiny picture.png "What colour is the circle?"
"""

from __future__ import annotations

import argparse
import json

from mmllm.cli.model_options import add_model_arguments, add_sampling_arguments, load_model, print_stream, sampling
from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image file")
    parser.add_argument("question", metavar="QUESTION", help="the question, in quotes")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help='print {"image", "question", "answer"} as one line')
    add_sampling_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.stream and args.json:
        raise UsageError("--stream and --json do not mix: a JSON line is printed whole")
    if not args.question.strip():
        raise UsageError("the question is empty")
    vlm = load_model(args)
    if args.stream:
        print_stream(vlm.stream_ask(args.image, args.question, **sampling(args)))
        return 0
    answer = vlm.ask(args.image, args.question, **sampling(args))
    print(json.dumps({"image": args.image, "question": args.question, "answer": answer}) if args.json else answer)
    return 0
