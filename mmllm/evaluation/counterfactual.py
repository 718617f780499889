"""Counterfactual consistency: `mmllm eval --task vqa --counterfactual "red=blue,green"`.

Every question that names a swapped word is asked again with the word replaced by each of its alternatives
("How many red objects are there?" -> "How many blue objects are there?"), about the same image. A model that
looks answers differently exactly when the image says the answer differs; one that leans on the question's
words changes its answer whenever they change, or never.

Whether a rewrite's answer should differ comes from the data itself, never from the model:
- `scene`: the sample's JSON describes the scene (`objects`, as the shapes set writes them), and the rewritten
  question is answered from it by the generator's own grammar (data_pipelines.convert.shapes.answer_from_objects);
- `same image`: another question about the same image (same pixels) has the rewritten text; its answer is the
  label (VQAv2 and GQA ask several questions per image);
- otherwise the rewrite is asked anyway and counted as unknown: how often the answer changed is all one can say.

The report gives, for rewrites whose answer should change and for those whose answer should not, how often the
model's answer changed (with a 95% Wilson interval) and how often it was right after the rewrite; the same per
swap ("red->blue").
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Sequence

from data_pipelines.counterfactual import parse_swaps, rewrite  # noqa: F401 (the swaps' one spelling, shared with training)
from data_pipelines.read.eval_samples import VQAQuestion
from mmllm.evaluation.groups import wilson_interval
from mmllm.evaluation.vqa_metric import normalize_vqa_answer, vqa_accuracy

CASES = ("should change", "should not change", "unknown")


@dataclass
class Rewrite:
    index: int  # of the original question
    word: str
    alternative: str
    question: VQAQuestion  # the original with its text rewritten
    expected: str | None  # the rewritten question's answer, where the data gives one
    source: str | None  # "scene", "same image" or None


def _question_key(text: str) -> str:
    return " ".join(text.lower().strip().rstrip("?").split())


def _image_key(question: VQAQuestion) -> str | None:
    if question.image is None:
        return None
    image = question.image
    return f"{image.mode}{image.size}" + hashlib.sha1(image.tobytes()).hexdigest()


def counterfactual_questions(questions: Sequence[VQAQuestion], swaps: dict[str, tuple[str, ...]]) -> list[Rewrite]:
    """One rewrite per question, swapped word present in it and alternative, in question order."""
    from data_pipelines.convert.shapes import answer_from_objects

    labels: dict[str | None, dict[str, str]] = {}  # image -> question text -> answer, for `same image`
    image_keys = [_image_key(q) for q in questions]
    for question, image in zip(questions, image_keys):
        labels.setdefault(image, {}).setdefault(_question_key(question.question), question.answer)
    rewrites = []
    for index, question in enumerate(questions):
        objects = question.fields.get("objects")
        for word, alternatives in swaps.items():
            for alternative in alternatives:
                text = rewrite(question.question, word, alternative)
                if text is None:
                    continue
                content = rewrite(question.content, word, alternative) if question.content else None
                expected, source = None, None
                if isinstance(objects, list):
                    try:
                        expected = answer_from_objects(objects, text)
                    except (KeyError, TypeError):  # objects of another format than the shapes set's
                        expected = None
                    source = "scene" if expected is not None else None
                if expected is None and image_keys[index] is not None:
                    expected = labels[image_keys[index]].get(_question_key(text))
                    source = "same image" if expected is not None else None
                rewrites.append(Rewrite(index, word, alternative,
                                        dataclasses.replace(question, question=text, content=content),
                                        expected, source))
    return rewrites


def _case(rewrite: Rewrite, gold: str) -> str:
    if rewrite.expected is None:
        return "unknown"
    differs = normalize_vqa_answer(rewrite.expected) != normalize_vqa_answer(gold)
    return "should change" if differs else "should not change"


def _summary(rows: list[dict]) -> dict:
    n = len(rows)
    changed = sum(r["changed"] for r in rows)
    summary = {"count": n, "changed": changed / n if n else None,
               "changed_ci95": list(wilson_interval(changed, n)) if n else None}
    scored = [r["correct"] for r in rows if r["correct"] is not None]
    summary["accuracy"] = sum(scored) / len(scored) if scored else None
    return summary


def counterfactual_report(swaps: dict[str, tuple[str, ...]], questions: Sequence[VQAQuestion],
                          predictions: Sequence[str], rewrites: Sequence[Rewrite],
                          rewrite_predictions: Sequence[str]) -> dict:
    """The report's `counterfactual` entry: per case (and per swap within each case) the share of rewrites whose
    predicted answer changed, its interval and the accuracy after the rewrite; one record per rewrite."""
    records = []
    for item, prediction in zip(rewrites, rewrite_predictions):
        original = questions[item.index]
        before = predictions[item.index]
        records.append({
            "index": item.index, "key": original.key, "swap": f"{item.word}->{item.alternative}",
            "question": original.question, "rewritten": item.question.question, "answer": original.answer,
            "expected": item.expected, "source": item.source, "case": _case(item, original.answer),
            "prediction": before, "rewritten_prediction": prediction,
            "changed": normalize_vqa_answer(prediction) != normalize_vqa_answer(before),
            "correct": None if item.expected is None else vqa_accuracy(prediction, [item.expected]),
        })
    cases = {case: _summary([r for r in records if r["case"] == case]) for case in CASES}
    by_swap = {}
    for swap in dict.fromkeys(r["swap"] for r in records):
        by_swap[swap] = {case: _summary([r for r in records if r["swap"] == swap and r["case"] == case])
                         for case in CASES}
    sources = {}
    for r in records:
        if r["source"] is not None:
            sources[r["source"]] = sources.get(r["source"], 0) + 1
    return {"swaps": {word: list(alts) for word, alts in swaps.items()}, "rewrites": len(records),
            "questions_rewritten": len({r["index"] for r in records}), "sources": sources, "cases": cases,
            "by_swap": by_swap, "records": records}
