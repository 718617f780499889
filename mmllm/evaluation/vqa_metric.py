"""VQAv2 answer normalisation and accuracy, following the official evaluator (vqaEval.py of the VQA API).

Normalisation, in the official order: newlines/tabs to spaces and strip; punctuation (`_strip_punctuation`);
lowercase; number words to digits ("two" -> "2", "none" -> "0"); drop the articles a/an/the; restore
apostrophes of common contractions ("dont" -> "don't"); single spaces between words.

Accuracy against n human answers (VQAv2 has 10): the mean over the n leave-one-out subsets of
min(1, matching answers in the subset / 3), so an answer given by 3 or more of 10 annotators scores 1.0 and
one given by 3 exactly scores 0.9. With a single reference (our chat shards hold one answer per question)
leave-one-out would always score 0, so accuracy is exact match after normalisation.

Where we differ from the official script, on purpose:
- References get the same full normalisation as the prediction. The official script only strips their
  punctuation because VQAv2's annotation files are normalised already; our references are free text.
- Per-question-type accuracy averages the per-question accuracies. The official script averages the last
  leave-one-out value of each question instead (a slip that the overall number does not share).
- Contractions are written with ASCII apostrophes (the official table mixes ' and U+2019).

Data without question types (LLaVA JSON from elsewhere) still gets VQAv2's two breakdowns: by answer type (yes/no,
number, other, from the normalised reference) and by question type from the question's first words ("how many",
"is there", "what color is the": the longest of VQAv2's prefixes that starts the question).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

# Marks the official evaluator removes or turns into spaces. "." is handled separately; "!" and "-" are
# not in the official list, so "t-shirt" and "yes!" keep them.
PUNCTUATION = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?")

# The official periodStrip pattern, "(?!<=\d)(\.)(?!\d)", opens with a lookahead where a lookbehind was
# meant, so in effect it removes every period not followed by a digit: "yes." -> "yes", "3.5" stays,
# "a.m." -> "am".
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official commaStrip pattern: any digit-comma-digit ("1,000") anywhere in the answer.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# Contractions written without their apostrophe -> the spelling with it. These are the entries of the
# official table that can ever match: the lookup runs after punctuation handling has replaced every ASCII
# apostrophe and after lowercasing, so the official keys that contain an apostrophe ("hed've", "he'dve"),
# a capital ("Im", "Ive") or map a word to itself ("let's") never fire there and are left out here.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "isnt": "isn't", "itd": "it'd", "itll": "it'll", "maam": "ma'am", "mightnt": "mightn't",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "shant": "shan't", "shouldve": "should've",
    "shouldnt": "shouldn't", "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


def _strip_punctuation(text: str) -> str:
    """The official processPunctuation: each mark is deleted or becomes a space, then periods go.

    A mark is deleted when it touches a space somewhere in the answer ("yes, sir" -> "yes sir") or when the
    answer holds a digit-comma-digit ("1,000" -> "1000"); otherwise it becomes a space so the words it
    joined stay apart ("red/blue" -> "red blue"). Both tests look at the original answer, not the partly
    processed one, as the official code does.
    """
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def normalize_vqa_answer(answer: str) -> str:
    """An answer as the VQAv2 evaluator compares it: "The Two dogs." -> "2 dogs", "dont" -> "don't"."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(text)
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQAv2 accuracy in [0, 1] of one predicted answer against the human answers of its question.

    One reference: 1.0 on an exact match after normalisation, else 0.0. Several: the mean over
    leave-one-out subsets of min(1, matches / 3) (10 references with 3 matches -> 0.9).
    """
    if len(references) == 0:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    answer = normalize_vqa_answer(prediction)
    is_match = [normalize_vqa_answer(reference) == answer for reference in references]
    if len(is_match) == 1:
        return float(is_match[0])
    matches = sum(is_match)
    # leaving reference i out removes one match exactly when reference i itself matched
    subset_scores = [min(1.0, (matches - left_out) / 3) for left_out in is_match]
    return sum(subset_scores) / len(subset_scores)


# VQAv2's question types are the opening words of its questions; these are its most frequent ones. A question is
# filed under the longest that starts it, and under "other" when none does.
QUESTION_PREFIXES = (
    "how many people are in", "how many people are", "how many", "how", "is there a", "is there", "are there any",
    "are there", "is this a", "is this an", "is this person", "is this", "is that a", "is the man", "is the woman",
    "is the person", "is the", "is it", "is he", "is", "are these", "are the", "are they", "are", "does the",
    "does this", "do you", "do", "can you", "could", "has", "was", "what color is the", "what color are the",
    "what color is", "what color", "what is the color of the", "what is the man", "what is the woman",
    "what is the person", "what is the name", "what is the", "what is on the", "what is in the", "what is this",
    "what is", "what are the", "what are", "what kind of", "what type of", "what does the", "what time",
    "what sport is", "what animal is", "what room is", "what number is", "what brand", "what", "where is the",
    "where are the", "where", "which", "who is", "who", "why is the", "why", "when",
)
_PREFIX_WORDS = sorted((tuple(prefix.split()) for prefix in QUESTION_PREFIXES), key=len, reverse=True)


def question_prefix(question: str) -> str:
    """VQAv2's question type of a question: the longest known opening ("how many", "what color is the"), else
    "other"."""
    words = tuple(_strip_punctuation(question.lower().replace(".", " ")).split())
    return next((" ".join(prefix) for prefix in _PREFIX_WORDS if words[:len(prefix)] == prefix), "other")


def answer_type(reference: str) -> str:
    """VQAv2's answer type of a reference answer: "yes/no", "number" (digits after normalisation, so "two" too), or
    "other"."""
    answer = normalize_vqa_answer(reference)
    if answer in ("yes", "no"):
        return "yes/no"
    return "number" if re.fullmatch(r"\d+(\.\d+)?", answer.replace(",", "")) else "other"


@dataclass
class VQAScores:
    """VQA accuracy (fractions in [0, 1]) over a set of questions, overall, per question type and per answer type.

    `question_types_from` says where the question types came from: "data" (the samples' own) or "prefix" (VQAv2's
    opening words, for data without types); None when there are none.
    """

    overall: float
    count: int
    per_question_type: dict[str, float] = field(default_factory=dict)
    count_per_question_type: dict[str, int] = field(default_factory=dict)
    per_answer_type: dict[str, float] = field(default_factory=dict)
    count_per_answer_type: dict[str, int] = field(default_factory=dict)
    question_types_from: str | None = None

    def to_dict(self) -> dict:
        return {
            "accuracy": self.overall,
            "count": self.count,
            "accuracy_per_question_type": dict(self.per_question_type),
            "count_per_question_type": dict(self.count_per_question_type),
            "question_types_from": self.question_types_from,
            "accuracy_per_answer_type": dict(self.per_answer_type),
            "count_per_answer_type": dict(self.count_per_answer_type),
        }


def vqa_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    question_types: Sequence[str | None] | None = None,
    questions: Sequence[str] | None = None,
) -> VQAScores:
    """Accuracy of predictions[i] against references[i]; a question whose type is None counts only overall.

    Without any question type, `questions` (their texts) give VQAv2's types from their opening words. Answer types
    come from each question's first reference.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if question_types is not None and len(question_types) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(question_types)} question types")
    if len(predictions) == 0:
        raise ValueError("no questions to score")
    if questions is not None and len(questions) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(questions)} questions")
    types = question_types if question_types is not None else [None] * len(predictions)
    source = "data" if any(t is not None for t in types) else None
    if source is None and questions is not None:
        types, source = [question_prefix(q) for q in questions], "prefix"
    accuracies = [vqa_accuracy(p, r) for p, r in zip(predictions, references)]
    by_type, by_answer = _mean_by(accuracies, types), _mean_by(accuracies, [answer_type(r[0]) for r in references])
    return VQAScores(
        overall=sum(accuracies) / len(accuracies),
        count=len(accuracies),
        per_question_type={t: sum(a) / len(a) for t, a in by_type.items()},
        count_per_question_type={t: len(a) for t, a in by_type.items()},
        per_answer_type={t: sum(a) / len(a) for t, a in by_answer.items()},
        count_per_answer_type={t: len(a) for t, a in by_answer.items()},
        question_types_from=source,
    )


def _mean_by(accuracies: Sequence[float], keys: Sequence[str | None]) -> dict[str, list[float]]:
    """The accuracies of each key (None left out), keys sorted."""
    grouped: dict[str, list[float]] = defaultdict(list)
    for accuracy, key in zip(accuracies, keys):
        if key is not None:
            grouped[key].append(accuracy)
    return dict(sorted(grouped.items()))
