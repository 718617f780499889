"""Fill each `<mask>` of a text with the model's most probable tokens, printed with their probabilities.

For a model trained with the masked-LM objective (`objective: mlm` in data.sources). Each `<mask>` stands for one
token. With an IMAGE the text is read as the image's caption, without as a plain text document: the two encodings
MLM training used. --json prints one JSON object per mask: {"text", "image", "mask", "fills": [{"score", "token",
"token_str", "sequence"}, ...]} (transformers' fill-mask pipeline's fields).

Example: mmllm fill-mask --model models/shapes-mlm picture.png "a red <mask> at the top left."
"""

from __future__ import annotations

import argparse
import json

from mmllm.cli.model_options import add_model_arguments, load_model
from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="[IMAGE] TEXT",
                        help="an optional image file, then the text with one or more <mask>, in quotes")
    add_model_arguments(parser)
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="fillers shown per mask (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per mask")


def run(args: argparse.Namespace) -> int:
    if len(args.inputs) > 2:
        raise UsageError(f"expected [IMAGE] TEXT, got {len(args.inputs)} arguments (quote the text)")
    image, text = (None, args.inputs[0]) if len(args.inputs) == 1 else args.inputs
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    if "<mask>" not in text:
        raise UsageError('the text has no <mask> to fill, e.g. "a red <mask> at the top left."')
    vlm = load_model(args)
    fills = vlm.fill_mask(text, image=image, top_k=args.top_k)
    for index, candidates in enumerate(fills, start=1):
        if args.json:
            print(json.dumps({"text": text, "image": image, "mask": index, "fills": candidates}))
            continue
        if len(fills) > 1:
            print(f"<mask> {index}:")
        for candidate in candidates:
            print(f"{candidate['score']:7.2%}  {candidate['token_str']!r:<16} {candidate['sequence']}")
    return 0
