"""Ask a question about an image, or a clip (.mp4, .webm, .gif: frames drawn as data.video draws them), and print
the answer.

With --json the answer is one JSON object {"image", "question", "answer"}. --explain OUT.png also draws where
in the image the answer looked (gradient x input relevance of each image token, see mmllm.explain).

Example: mmllm ask --model models/shapes-tiny picture.png "What colour is the circle?"
"""

from __future__ import annotations

import argparse
import json
import sys

from mmllm.cli.model_options import add_model_arguments, add_sampling_arguments, load_model, print_stream, sampling
from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image file, or a clip (.mp4, .webm, .gif)")
    parser.add_argument("question", metavar="QUESTION", help="the question, in quotes")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help='print {"image", "question", "answer"} as one line')
    parser.add_argument("--explain", metavar="OUT.png", help="write the image with a heatmap of where the answer looked")
    parser.add_argument("--frames", type=int, default=8, help="a clip's frames, from the middles of equal spans")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="refuse clips longer than this (default 600)")
    add_sampling_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.stream and args.json:
        raise UsageError("--stream and --json do not mix: a JSON line is printed whole")
    if args.stream and args.explain:
        raise UsageError("--stream and --explain do not mix: the explanation needs the whole answer")
    if not args.question.strip():
        raise UsageError("the question is empty")
    from data_pipelines.video import VIDEO_EXTENSIONS, VideoOptions

    if args.image.lower().rsplit(".", 1)[-1] in VIDEO_EXTENSIONS:
        if args.explain:
            raise UsageError("--explain draws on one image; a clip has several frames")
        if args.frames < 1 or not args.max_seconds > 0:
            raise UsageError("--frames must be at least 1 and --max-seconds positive")
        vlm = load_model(args)
        messages, frames = vlm.video_question(args.image, args.question,
                                              VideoOptions(frames=args.frames, max_seconds=args.max_seconds))
        if args.stream:
            print_stream(vlm.stream_chat(messages, frames, **sampling(args)))
            return 0
        answer = vlm.chat(messages, frames, **sampling(args))
        print(json.dumps({"clip": args.image, "question": args.question, "answer": answer}) if args.json else answer)
        return 0
    vlm = load_model(args)
    if args.stream:
        print_stream(vlm.stream_ask(args.image, args.question, **sampling(args)))
        return 0
    record = {"image": args.image, "question": args.question}
    if args.explain:
        explanation = vlm.explain(args.image, args.question, **sampling(args))
        record.update(answer=explanation.answer, explain=str(explanation.save(args.explain)))
    else:
        record["answer"] = vlm.ask(args.image, args.question, **sampling(args))
    print(json.dumps(record) if args.json else record["answer"])
    if args.explain and not args.json:
        print(f"wrote {record['explain']}", file=sys.stderr)
    return 0
