"""One `mmllm eval` run, as a function of a loaded model: read the eval samples, answer, score, and build the
report (mmllm.evaluation.report) with its groups and counterfactuals. The command line (mmllm/cli/evaluate.py)
parses and prints; everything it reports is computed here.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data_pipelines.read.eval_samples import TURNS, vqa_questions
from data_pipelines.read.eval_samples import caption_items
from data_pipelines.read.eval_samples import text_documents
from data_pipelines.read.shards import UnreadableShard
from mmllm.errors import UsageError
from mmllm.evaluation import TextNLLTotals
from mmllm.evaluation import caption_scores
from mmllm.evaluation import vqa_scores
from mmllm.evaluation.counterfactual import counterfactual_questions, counterfactual_report
from mmllm.evaluation.groups import group_of, group_report
from mmllm.evaluation.report import build_report
from mmllm.evaluation.seq2seq_metrics import sample_scores, seq2seq_scores, worst_cases
from mmllm.evaluation.vqa_answers import answer_questions, default_turns
from mmllm.evaluation.vqa_metric import answer_type, question_prefix, vqa_accuracy
from mmllm.explain import explain_answer

RECORD_FIELDS = ("key", "turn", "turns", "question", "answer", "question_type", "question_prefix", "answer_type",
                 "prediction")  # of each vqa record


@dataclass
class EvalRequest:
    """What `mmllm eval` was asked: the task, the data, and how to ask (see mmllm/cli/evaluate.py for each)."""

    task: str  # vqa | caption | text | seq2seq
    data: str  # a folder of shards or a brace pattern
    model: str = ""  # where the model came from, for the report
    blind: bool = False
    turns: str | None = None  # vqa: in-context | alone | both; None: both on multi-turn data, else alone
    limit: int | None = None
    batch_size: int = 64
    group_by: str | None = None
    min_group_size: int = 10  # questions a group needs to take part in the largest-gap test
    swaps: dict[str, list[str]] | None = None  # --counterfactual, parsed
    explain_dir: str | None = None
    progress: Callable[[str], Callable[[int, int], None]] = lambda label: lambda done, total: None


def evaluate(vlm, request: EvalRequest, options: dict, handler) -> dict:
    """The report of one evaluation (figures, samples, groups, counterfactuals), before options and timing."""
    start = time.perf_counter()
    task = {"vqa": evaluate_vqa, "caption": evaluate_captions, "text": evaluate_text, "fill-mask": evaluate_fill_mask,
            "seq2seq": evaluate_seq2seq}[request.task]
    scores, samples, items = task(vlm, request, options, handler)
    seconds = time.perf_counter() - start
    by_turns = scores if isinstance(scores, dict) else None  # vqa: {turns mode: scores}
    main_scores = next(iter(by_turns.values())) if by_turns else scores
    report = build_report(request.task, main_scores, model=request.model, data=request.data, blind=request.blind,
                          samples=samples, by_turns=by_turns)
    if request.task == "seq2seq":
        report["worst_cases"] = worst_cases(samples)
    if request.group_by:
        report["groups"] = evaluate_groups(vlm, request, options, samples, items)
    if request.swaps:
        report["counterfactual"] = evaluate_counterfactual(vlm, request, options, request.swaps, samples, items)
    report["skipped_samples"] = dict(handler.counts)
    report["seconds"] = round(seconds, 3)
    report["items_per_second"] = round(len(samples) / seconds, 2) if seconds > 0 else None
    return report


def _read(reader, request: EvalRequest, handler, what: str) -> list:
    """The items of --data through one of data_pipelines.read.eval_samples' readers; none at all is a UsageError."""
    try:
        items = reader(request.data, limit=request.limit, handler=handler)
    except (FileNotFoundError, UnreadableShard) as error:  # missing, or not a tar file: named, exit 2
        raise UsageError(str(error)) from None
    if not items:
        skipped = f" ({handler.total} bad samples skipped)" if handler.total else ""
        raise UsageError(f"no {what} in {request.data}{skipped}: is it the right kind of shards for --task {request.task}?")
    return items


def evaluate_vqa(vlm, request: EvalRequest, options: dict, handler):
    """Scores per turns mode ({mode: VQAScores}, the main mode first), one sample record per answer, the questions."""
    questions = _read(vqa_questions, request, handler, "questions")
    for name in (request.group_by or "").split(",") if request.group_by else ():
        if name.strip() not in RECORD_FIELDS and not any(name.strip() in q.fields for q in questions):
            found = sorted(set(RECORD_FIELDS) | {k for q in questions for k in q.fields})
            raise UsageError(f"--group-by: no question has a field {name.strip()!r}; fields: {', '.join(found)}")
    modes = {None: default_turns(questions), "both": TURNS}.get(request.turns, (request.turns,))
    types = [q.question_type for q in questions]
    # VQAv2's breakdowns of each question, the same in every mode
    breakdowns = [{"question_prefix": question_prefix(q.question), "answer_type": answer_type(q.answer)}
                  for q in questions]
    scores, samples = {}, []
    for mode in modes:
        predictions = answer_questions(vlm, questions, mode, blind=request.blind, batch_size=request.batch_size,
                                       progress=request.progress(f"vqa questions ({mode})"), **options)
        scores[mode] = vqa_scores(predictions, [[q.answer] for q in questions],
                                  types if any(t is not None for t in types) else None,
                                  questions=[q.question for q in questions])
        records = [{"key": q.key, "turn": q.turn, "turns": mode, "question": q.question, "answer": q.answer,
                    "question_type": q.question_type, **breakdown, "prediction": p}
                   for q, breakdown, p in zip(questions, breakdowns, predictions)]
        if request.explain_dir and mode == modes[0]:
            explain_answers(vlm, questions, predictions, mode, records, Path(request.explain_dir), request.blind,
                            request.progress(f"explanations ({mode})"))
        samples += records
    return scores, samples, questions


def evaluate_groups(vlm, request: EvalRequest, options: dict, samples: list[dict], questions: list) -> dict:
    """--group-by: the main turns mode's scores per group, beside a blind pass over the same questions."""
    records = samples[:len(questions)]  # the main mode's records come first, in question order
    mode = records[0]["turns"]
    scores = [vqa_accuracy(r["prediction"], [r["answer"]]) for r in records]
    blind = None
    if not request.blind:  # the language prior of each group: the same questions with blank images
        predictions = answer_questions(vlm, questions, mode, blind=True, batch_size=request.batch_size,
                                       progress=request.progress(f"vqa questions ({mode}, blind, for --group-by)"), **options)
        blind = [vqa_accuracy(p, [q.answer]) for p, q in zip(predictions, questions)]
    groups = [group_of(r, q.fields, request.group_by) for r, q in zip(records, questions)]
    try:
        report = group_report(request.group_by, groups, scores, blind, clusters=[r["key"] for r in records],
                              min_group_size=request.min_group_size)
    except ValueError as error:
        raise UsageError(f"--group-by: {error}") from None
    return {"turns": mode, **report}


def evaluate_counterfactual(vlm, request: EvalRequest, options: dict, swaps: dict, samples: list[dict],
                            questions: list) -> dict:
    """--counterfactual: the main turns mode's questions with words swapped, answered the same way."""
    records = samples[:len(questions)]  # the main mode's records, in question order
    mode = records[0]["turns"]
    rewrites = counterfactual_questions(questions, swaps)
    if not rewrites:
        words = ", ".join(repr(word) for word in swaps)
        raise UsageError(f"--counterfactual: no question names {words}")
    predictions = answer_questions(vlm, [r.question for r in rewrites], mode, blind=request.blind,
                                   batch_size=request.batch_size, progress=request.progress(f"counterfactual questions ({mode})"),
                                   **options)
    report = counterfactual_report(swaps, questions, [r["prediction"] for r in records], rewrites, predictions)
    return {"turns": mode, **report}


def explain_answers(vlm, questions, predictions, mode: str, records: list[dict], folder: Path, blind: bool,
                    progress: Callable[[int, int], None]) -> None:
    """A heatmap per answered question in folder, its path recorded in the question's sample record."""
    blank = vlm.blank_image() if blind else None
    for index, (question, prediction, record) in enumerate(zip(questions, predictions, records)):
        if question.image is None:
            continue  # a text-only question looked at no image
        image = question.image if blank is None else blank
        explanation = explain_answer(vlm, image, question.prompt(mode), prediction)
        record["explain"] = str(explanation.save(folder / f"{index:05d}-{question.key}-turn{question.turn}.png"))
        record["relevance"] = [[round(float(v), 4) for v in row] for row in explanation.relevance]
        progress(index + 1, len(questions))


def evaluate_captions(vlm, request: EvalRequest, options: dict, handler):

    items = _read(caption_items, request, handler, "captioned images")
    images = [vlm.blank_image() if request.blind else item.image for item in items]
    predictions = vlm.caption(images, batch_size=request.batch_size, progress=request.progress("caption images"), **options)
    # keys by position: the same shard key may appear in two shards
    scores = caption_scores({i: item.references for i, item in enumerate(items)}, dict(enumerate(predictions)))
    samples = [{"key": item.key, "references": item.references, "prediction": p}
               for item, p in zip(items, predictions)]
    return scores, samples, None


def evaluate_fill_mask(vlm, request: EvalRequest, options: dict, handler):
    """Masked-token accuracy, top-1 and top-5, per word class where the samples' JSON types their words
    (mmllm.evaluation.fill_mask); any kind of shards."""
    from data_pipelines.read.shards import read_samples, resolve_kind
    from mmllm.evaluation.fill_mask import mask_items, score_items

    if vlm.processor.mask_id is None:
        raise UsageError(f"{request.model or 'the model'} has no <mask> token: it was not trained with the MLM "
                         "objective (objective: mlm in data.sources)")
    try:
        kind = resolve_kind(request.data, None)
    except (ValueError, FileNotFoundError, UnreadableShard) as error:
        raise UsageError(str(error)) from None
    samples = _read(lambda path, limit, handler: list(itertools.islice(read_samples(path, kind, handler), limit)),
                    request, handler, "samples")
    if request.blind and kind == "text":
        raise UsageError("--blind replaces images, and text shards have none")
    items, left_out = mask_items(vlm.processor, samples, vlm.blank_image() if request.blind else None)
    if not items:
        raise UsageError(f"no token to mask in {request.data}")
    scores, records = score_items(vlm, items, request.batch_size, request.progress("fill-mask inputs"))
    scores.left_out = left_out
    return scores, records, None


def evaluate_text(vlm, request: EvalRequest, options: dict, handler):

    documents = _read(text_documents, request, handler, "text documents")
    totals = TextNLLTotals()
    samples = []
    for index, (text, result) in enumerate(zip(documents, vlm.text_nll(
            documents, batch_size=request.batch_size, progress=request.progress("text pieces")))):
        if result is None:  # an empty document: nothing to predict
            continue
        nll, tokens = result
        totals.add(nll, tokens, text)
        samples.append({"index": index, "nll": nll, "tokens": tokens, "bytes": len(text.encode("utf-8"))})
    if not totals.tokens:
        raise UsageError(f"the documents in {request.data} are empty: no token to score")
    return totals.scores(), samples, None


def evaluate_seq2seq(vlm, request: EvalRequest, options: dict, handler):
    """Each user -> assistant pair of chat shards answered greedily after the gold earlier turns of its
    conversation (the pair's source), scored against the assistant's turn (its target)."""
    pairs = _read(vqa_questions, request, handler, "user -> assistant pairs")
    predictions = answer_questions(vlm, pairs, "in-context", batch_size=request.batch_size,
                                   progress=request.progress("seq2seq pairs"), **options)
    references = [pair.answer for pair in pairs]
    scores = seq2seq_scores(predictions, references)
    fields = [{k: v for k, v in pair.fields.items() if k != "url"} for pair in pairs]  # the row's own (from-pairs)
    samples = [{"key": pair.key, "turn": pair.turn, "source": pair.question, "reference": pair.answer,
                "prediction": prediction, **per_sample, **({"fields": row} if row else {})}
               for pair, row, prediction, per_sample in zip(pairs, fields, predictions,
                                                            sample_scores(predictions, references))]
    return scores, samples, pairs
