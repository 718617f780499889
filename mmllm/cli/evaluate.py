"""Evaluate a model on shards: VQA accuracy, caption BLEU-4/CIDEr-D, or text loss/perplexity.

Prints a table; --out writes every figure, the model, the data and the options as JSON.

  vqa      chat shards: each user -> assistant pair answered with the sample's image, scored with the
           VQAv2 rule (accuracy overall and per question type where the data records one), in two modes:
           in-context (after the gold earlier turns of its conversation: the distribution the data
           describes) and alone (as the first turn after the image: benchmark style); both are reported
           when the data has multi-turn conversations (--turns picks one)
  caption  caption shards: captioned with the training instruction, scored against every reference
  text     text shards: each document scored by the model's forward pass, in pieces of max_seq_len tokens
  fill-mask  any shards, for a model trained with the MLM objective: top-1 and top-5 accuracy of hidden tokens, per
           word class where a caption's JSON types its words (shapes: colour, shape, size); see
           mmllm.evaluation.fill_mask
  seq2seq  chat shards (mmllm data from-pairs): each assistant turn generated greedily after its user turn (and the
           gold turns before it), scored with corpus chrF and BLEU (sacrebleu), ROUGE-L (rouge-score) and exact
           match; the report lists the 5 worst by sentence chrF, --samples-out writes every sample as JSON lines
--blind replaces every image with a blank one (the mean colour): the gap to the normal run is how much the
model looks at the image. --group-by FIELD (vqa) adds accuracy per value of FIELD (a key of the report's samples,
such as question_type or answer, or of the sample's own JSON) with 95% intervals, each group's blind accuracy
(a second, blind pass) and the largest gap between groups with its p-value (mmllm.evaluation.groups).
--counterfactual "red=blue,green" asks each question naming a swapped word again with the word replaced and reports
how often the answer changes when the data says it should, and when it should not (mmllm.evaluation.counterfactual).
Answers are greedy by default, batched with left padding.
Example: mmllm eval --model models/shapes-tiny --data data/shapes/val/chat --task vqa --out val-vqa.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmllm.cli.model_options import add_model_arguments, add_sampling_arguments, load_model, sampling
from mmllm.errors import UsageError

DEFAULT_MAX_NEW_TOKENS = {"vqa": 8, "caption": 32, "seq2seq": 64}  # shapes answers, captions, a sentence or two


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="a folder of .tar shards or a brace pattern (data/val/{00000..00003}.tar)")
    parser.add_argument("--task", required=True, choices=("vqa", "caption", "text", "seq2seq", "fill-mask"),
                        help="what to measure")
    parser.add_argument("--blind", action="store_true", help="replace every image with a blank one")
    parser.add_argument("--turns", choices=("in-context", "alone", "both"), default=None,
                        help="vqa: answer each question after the gold earlier turns of its conversation "
                             "(in-context), as the first turn (alone), or both (default: both when the data has "
                             "multi-turn conversations, else alone)")
    parser.add_argument("--out", metavar="FILE.json", help="write the full report (figures, samples, options) here")
    parser.add_argument("--samples-out", metavar="FILE.jsonl",
                        help="write each sample's record (prediction, reference, its scores) as one JSON line")
    parser.add_argument("--explain-dir", metavar="DIR",
                        help="vqa: write a heatmap of where each answer looked (first turns mode) to DIR; use with "
                             "--limit")
    parser.add_argument("--group-by", metavar="FIELD",
                        help="vqa: accuracy per value of FIELD (question_type, answer, or a key of the samples' JSON), "
                             "with 95%% intervals, the blind accuracy of each group and the largest gap")
    parser.add_argument("--min-group-size", type=int, default=10, metavar="N",
                        help="--group-by: questions a group needs to take part in the largest-gap test (smaller "
                             "groups are listed, not tested; default 10)")
    parser.add_argument("--counterfactual", metavar="SWAPS",
                        help='vqa: ask every question naming a word of SWAPS again with the word swapped '
                             '("red=blue,green;left=right") and report how often the answer changes when the data '
                             'says it should, and when it should not')
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate only the first N questions / images / documents")
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="prompts per batch (default 64)")
    add_sampling_arguments(parser, max_new_tokens="8 for vqa, 32 for caption, 64 for seq2seq", stream=False)


class Progress:
    """`done/total` on stderr: rewritten in place on a terminal, a line per tenth of the way otherwise."""

    def __init__(self, label: str, stream=None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.in_place = self.stream.isatty()
        self.next_tenth = 1

    def __call__(self, done: int, total: int) -> None:
        if self.in_place:
            self.stream.write(f"\r{self.label} {done}/{total}" + ("\n" if done >= total else ""))
        elif done * 10 >= self.next_tenth * total:
            self.stream.write(f"{self.label} {done}/{total}\n")
            self.next_tenth = done * 10 // total + 1
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    if (args.turns or args.explain_dir or args.group_by or args.counterfactual) and args.task != "vqa":
        raise UsageError("--turns, --explain-dir, --group-by and --counterfactual apply to --task vqa")
    if args.min_group_size < 1:
        raise UsageError(f"--min-group-size must be at least 1, got {args.min_group_size}")
    swaps = None
    if args.counterfactual is not None:
        from mmllm.evaluation.counterfactual import parse_swaps

        try:
            swaps = parse_swaps(args.counterfactual)
        except ValueError as error:
            raise UsageError(f"--counterfactual: {error}") from None
    if args.blind and args.task == "text":
        raise UsageError("--blind applies to vqa and caption; text documents have no image")
    options = sampling(args, DEFAULT_MAX_NEW_TOKENS.get(args.task))
    if args.task == "seq2seq":  # a missing scorer is said before any generation
        from mmllm.evaluation.seq2seq_metrics import require_scorers

        require_scorers()
    vlm = load_model(args)  # before reading the data: a wrong model is reported first

    # imported here, not at the top: `mmllm --help` loads every command module
    from data_pipelines.read.bad_samples import BadSampleHandler
    from mmllm.evaluation.report import format_counterfactual, format_groups, format_report, format_worst_cases
    from mmllm.evaluation.run import EvalRequest, evaluate

    handler = BadSampleHandler()
    request = EvalRequest(task=args.task, data=args.data, model=args.model, blind=args.blind, turns=args.turns,
                          limit=args.limit, batch_size=args.batch_size, group_by=args.group_by,
                          min_group_size=args.min_group_size, swaps=swaps,
                          explain_dir=args.explain_dir, progress=Progress)
    report = evaluate(vlm, request, options, handler)
    report["options"] = {
        "task": args.task, "blind": args.blind, "limit": args.limit, "batch_size": args.batch_size,
        **({} if args.task in ("text", "fill-mask") else options),
        "device": str(vlm.device), "dtype": str(vlm.dtype).removeprefix("torch."),
    }
    print(format_report(report))
    if args.group_by:
        print(format_groups(report["groups"]))
    if swaps:
        print(format_counterfactual(report["counterfactual"]))
    if "worst_cases" in report:
        print(format_worst_cases(report))
    if handler.total:
        print(handler.summary(), file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    if args.samples_out:
        out = Path(args.samples_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(sample, ensure_ascii=False) + "\n" for sample in report.get("samples", [])),
                       encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0
