"""Evaluate a model on shards: VQA accuracy, caption BLEU-4/CIDEr-D, or text loss/perplexity.

Prints a table; --out writes every figure, the model, the data and the options as JSON.

  vqa      chat shards: each user -> assistant pair answered with the sample's image, scored with the
           VQAv2 rule (accuracy overall and per question type where the data records one), in two modes:
           in-context (after the gold earlier turns of its conversation: the distribution the data
           describes) and alone (as the first turn after the image: benchmark style); both are reported
           when the data has multi-turn conversations (--turns picks one)
  caption  caption shards: captioned with the training instruction, scored against every reference
  text     text shards: each document scored by the model's forward pass, in pieces of max_seq_len tokens
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
import time
from pathlib import Path

from mmllm.cli.model_options import add_model_arguments, add_sampling_arguments, load_model, sampling
from mmllm.errors import UsageError

RECORD_FIELDS = ("key", "turn", "turns", "question", "answer", "question_type", "question_prefix", "answer_type",
                 "prediction")  # of each vqa record
DEFAULT_MAX_NEW_TOKENS = {"vqa": 8, "caption": 32}  # shapes answers are a few tokens, captions a sentence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="a folder of .tar shards or a brace pattern (data/val/{00000..00003}.tar)")
    parser.add_argument("--task", required=True, choices=("vqa", "caption", "text"), help="what to measure")
    parser.add_argument("--blind", action="store_true", help="replace every image with a blank one")
    parser.add_argument("--turns", choices=("in-context", "alone", "both"), default=None,
                        help="vqa: answer each question after the gold earlier turns of its conversation "
                             "(in-context), as the first turn (alone), or both (default: both when the data has "
                             "multi-turn conversations, else alone)")
    parser.add_argument("--out", metavar="FILE.json", help="write the full report (figures, samples, options) here")
    parser.add_argument("--explain-dir", metavar="DIR",
                        help="vqa: write a heatmap of where each answer looked (first turns mode) to DIR; use with "
                             "--limit")
    parser.add_argument("--group-by", metavar="FIELD",
                        help="vqa: accuracy per value of FIELD (question_type, answer, or a key of the samples' JSON), "
                             "with 95%% intervals, the blind accuracy of each group and the largest gap")
    parser.add_argument("--counterfactual", metavar="SWAPS",
                        help='vqa: ask every question naming a word of SWAPS again with the word swapped '
                             '("red=blue,green;left=right") and report how often the answer changes when the data '
                             'says it should, and when it should not')
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate only the first N questions / images / documents")
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="prompts per batch (default 64)")
    add_sampling_arguments(parser, max_new_tokens="8 for vqa, 32 for caption", stream=False)


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
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    if (args.turns or args.explain_dir or args.group_by or args.counterfactual) and args.task != "vqa":
        raise UsageError("--turns, --explain-dir, --group-by and --counterfactual apply to --task vqa")
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
    vlm = load_model(args)  # before reading the data: a wrong model is reported first

    from data_pipelines.read.bad_samples import BadSampleHandler

    handler = BadSampleHandler()
    start = time.perf_counter()
    evaluate = {"vqa": evaluate_vqa, "caption": evaluate_captions, "text": evaluate_text}[args.task]
    scores, samples, items = evaluate(vlm, args, options, handler)
    seconds = time.perf_counter() - start

    from mmllm.evaluation import build_report, format_report

    by_turns = scores if isinstance(scores, dict) else None  # vqa: {turns mode: scores}
    main_scores = next(iter(by_turns.values())) if by_turns else scores
    report = build_report(args.task, main_scores, model=args.model, data=args.data, blind=args.blind,
                          samples=samples, by_turns=by_turns)
    report["options"] = {
        "task": args.task, "blind": args.blind, "limit": args.limit, "batch_size": args.batch_size,
        **({} if args.task == "text" else options),
        "device": str(vlm.device), "dtype": str(vlm.dtype).removeprefix("torch."),
    }
    if args.group_by:
        report["groups"] = evaluate_groups(vlm, args, options, samples, items)
    if swaps:
        report["counterfactual"] = evaluate_counterfactual(vlm, args, options, swaps, samples, items)
    report["skipped_samples"] = dict(handler.counts)
    report["seconds"] = round(seconds, 3)
    report["items_per_second"] = round(len(samples) / seconds, 2) if seconds > 0 else None
    print(format_report(report))
    if args.group_by:
        from mmllm.evaluation.report import format_groups

        print(format_groups(report["groups"]))
    if swaps:
        from mmllm.evaluation.report import format_counterfactual

        print(format_counterfactual(report["counterfactual"]))
    if handler.total:
        print(handler.summary(), file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _read(reader, args: argparse.Namespace, handler, what: str) -> list:
    """The items of --data through one of data_pipelines.read.eval_samples' readers; none at all is a UsageError."""
    from data_pipelines.read.shards import UnreadableShard

    try:
        items = reader(args.data, limit=args.limit, handler=handler)
    except (FileNotFoundError, UnreadableShard) as error:  # missing, or not a tar file: named, exit 2
        raise UsageError(str(error)) from None
    if not items:
        skipped = f" ({handler.total} bad samples skipped)" if handler.total else ""
        raise UsageError(f"no {what} in {args.data}{skipped}: is it the right kind of shards for --task {args.task}?")
    return items


def evaluate_vqa(vlm, args: argparse.Namespace, options: dict, handler):
    """Scores per turns mode ({mode: VQAScores}, the main mode first), one sample record per answer, the questions."""
    from data_pipelines.read.eval_samples import TURNS, vqa_questions
    from mmllm.evaluation import vqa_scores
    from mmllm.evaluation.vqa_metric import answer_type, question_prefix
    from mmllm.evaluation.vqa_answers import answer_questions, default_turns

    questions = _read(vqa_questions, args, handler, "questions")
    for name in (args.group_by or "").split(",") if args.group_by else ():
        if name.strip() not in RECORD_FIELDS and not any(name.strip() in q.fields for q in questions):
            found = sorted(set(RECORD_FIELDS) | {k for q in questions for k in q.fields})
            raise UsageError(f"--group-by: no question has a field {name.strip()!r}; fields: {', '.join(found)}")
    modes = {None: default_turns(questions), "both": TURNS}.get(args.turns, (args.turns,))
    types = [q.question_type for q in questions]
    # VQAv2's breakdowns of each question, the same in every mode
    breakdowns = [{"question_prefix": question_prefix(q.question), "answer_type": answer_type(q.answer)}
                  for q in questions]
    scores, samples = {}, []
    for mode in modes:
        predictions = answer_questions(vlm, questions, mode, blind=args.blind, batch_size=args.batch_size,
                                       progress=Progress(f"vqa questions ({mode})"), **options)
        scores[mode] = vqa_scores(predictions, [[q.answer] for q in questions],
                                  types if any(t is not None for t in types) else None,
                                  questions=[q.question for q in questions])
        records = [{"key": q.key, "turn": q.turn, "turns": mode, "question": q.question, "answer": q.answer,
                    "question_type": q.question_type, **breakdown, "prediction": p}
                   for q, breakdown, p in zip(questions, breakdowns, predictions)]
        if args.explain_dir and mode == modes[0]:
            explain_answers(vlm, questions, predictions, mode, records, Path(args.explain_dir), args.blind)
        samples += records
    return scores, samples, questions


def evaluate_groups(vlm, args: argparse.Namespace, options: dict, samples: list[dict], questions: list) -> dict:
    """--group-by: the main turns mode's scores per group, beside a blind pass over the same questions."""
    from mmllm.evaluation.groups import group_of, group_report
    from mmllm.evaluation.vqa_answers import answer_questions
    from mmllm.evaluation.vqa_metric import vqa_accuracy

    records = samples[:len(questions)]  # the main mode's records come first, in question order
    mode = records[0]["turns"]
    scores = [vqa_accuracy(r["prediction"], [r["answer"]]) for r in records]
    blind = None
    if not args.blind:  # the language prior of each group: the same questions with blank images
        predictions = answer_questions(vlm, questions, mode, blind=True, batch_size=args.batch_size,
                                       progress=Progress(f"vqa questions ({mode}, blind, for --group-by)"), **options)
        blind = [vqa_accuracy(p, [q.answer]) for p, q in zip(predictions, questions)]
    groups = [group_of(r, q.fields, args.group_by) for r, q in zip(records, questions)]
    try:
        report = group_report(args.group_by, groups, scores, blind)
    except ValueError as error:
        raise UsageError(f"--group-by: {error}") from None
    return {"turns": mode, **report}


def evaluate_counterfactual(vlm, args: argparse.Namespace, options: dict, swaps: dict, samples: list[dict],
                            questions: list) -> dict:
    """--counterfactual: the main turns mode's questions with words swapped, answered the same way."""
    from mmllm.evaluation.counterfactual import counterfactual_questions, counterfactual_report
    from mmllm.evaluation.vqa_answers import answer_questions

    records = samples[:len(questions)]  # the main mode's records, in question order
    mode = records[0]["turns"]
    rewrites = counterfactual_questions(questions, swaps)
    if not rewrites:
        words = ", ".join(repr(word) for word in swaps)
        raise UsageError(f"--counterfactual: no question names {words}")
    predictions = answer_questions(vlm, [r.question for r in rewrites], mode, blind=args.blind,
                                   batch_size=args.batch_size, progress=Progress(f"counterfactual questions ({mode})"),
                                   **options)
    report = counterfactual_report(swaps, questions, [r["prediction"] for r in records], rewrites, predictions)
    return {"turns": mode, **report}


def explain_answers(vlm, questions, predictions, mode: str, records: list[dict], folder: Path, blind: bool) -> None:
    """A heatmap per answered question in folder, its path recorded in the question's sample record."""
    from mmllm.explain import explain_answer

    blank = vlm.blank_image() if blind else None
    progress = Progress(f"explanations ({mode})")
    for index, (question, prediction, record) in enumerate(zip(questions, predictions, records)):
        if question.image is None:
            continue  # a text-only question looked at no image
        image = question.image if blank is None else blank
        explanation = explain_answer(vlm, image, question.prompt(mode), prediction)
        record["explain"] = str(explanation.save(folder / f"{index:05d}-{question.key}-turn{question.turn}.png"))
        record["relevance"] = [[round(float(v), 4) for v in row] for row in explanation.relevance]
        progress(index + 1, len(questions))


def evaluate_captions(vlm, args: argparse.Namespace, options: dict, handler):
    from data_pipelines.read.eval_samples import caption_items
    from mmllm.evaluation import caption_scores

    items = _read(caption_items, args, handler, "captioned images")
    images = [vlm.blank_image() if args.blind else item.image for item in items]
    predictions = vlm.caption(images, batch_size=args.batch_size, progress=Progress("caption images"), **options)
    # keys by position: the same shard key may appear in two shards
    scores = caption_scores({i: item.references for i, item in enumerate(items)}, dict(enumerate(predictions)))
    samples = [{"key": item.key, "references": item.references, "prediction": p}
               for item, p in zip(items, predictions)]
    return scores, samples, None


def evaluate_text(vlm, args: argparse.Namespace, options: dict, handler):
    from data_pipelines.read.eval_samples import text_documents
    from mmllm.evaluation import TextNLLTotals

    documents = _read(text_documents, args, handler, "text documents")
    totals = TextNLLTotals()
    samples = []
    for index, (text, result) in enumerate(zip(documents, vlm.text_nll(
            documents, batch_size=args.batch_size, progress=Progress("text pieces")))):
        if result is None:  # an empty document: nothing to predict
            continue
        nll, tokens = result
        totals.add(nll, tokens, text)
        samples.append({"index": index, "nll": nll, "tokens": tokens, "bytes": len(text.encode("utf-8"))})
    if not totals.tokens:
        raise UsageError(f"the documents in {args.data} are empty: no token to score")
    return totals.scores(), samples, None
