"""Read a source once, in order, for evaluation: VQA questions, caption references and text documents.

`mmllm eval` and the trainer's validation VQA both take their questions from here, so a question is asked
the same way in both, in one of two modes (`TURNS`):
- `in-context`: after the gold earlier turns of its conversation, as the data presents it (what the
  validation loss measures);
- `alone`: as the first turn after the image (its image marker moved to it), benchmark style.
The two agree for a conversation's first question; on multi-turn data they can differ a lot, so reports
name the mode.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator

from PIL import Image

from data_pipelines.chat.conversation import question_conversation
from data_pipelines.chat.special_tokens import IMAGE_MARKER
from data_pipelines.read.bad_samples import BadSampleHandler
from data_pipelines.read.shards import Sample, read_samples

TURNS = ("in-context", "alone")
CONVERSATION_KEYS = ("conversations", "messages", "questions")  # in VQAQuestion.fields question by question


@dataclass
class VQAQuestion:
    """One human -> gpt pair of a chat sample. `question` is the user turn's text without its image marker,
    `turn` its index among the conversation's questions, `history` the turns before it and `content` the user
    turn as written ({"role", "content"} rows, image markers where the data put them)."""

    key: str
    image: Image.Image | None
    question: str
    answer: str
    question_type: str | None = None
    turn: int = 0
    history: list[dict[str, str]] = field(default_factory=list)
    content: str | None = None
    # the sample's JSON (its top level without the conversation, then this question's entry in `questions`)
    fields: dict[str, Any] = field(default_factory=dict)

    def prompt(self, turns: str) -> list[dict[str, str]]:
        """The conversation to answer: `alone` or `in-context` (see the module's docstring)."""
        if turns not in TURNS:
            raise ValueError(f"unknown turns mode {turns!r}; choose one of {TURNS}")
        if turns == "alone" or not self.history:
            return question_conversation(self.question, with_image=self.image is not None)
        return [*self.history, {"role": "user", "content": self.content or self.question}]


@dataclass
class CaptionItem:
    key: str
    image: Image.Image
    references: list[str]


def vqa_questions(path: str | list, limit: int | None = None,
                  handler: BadSampleHandler | None = None) -> list[VQAQuestion]:
    """The questions of chat shards: each user turn followed by an assistant turn is one question."""
    return list(itertools.islice(_questions(read_samples(path, "chat", handler)), limit))


def _questions(samples: Iterator[Sample]) -> Iterator[VQAQuestion]:
    for sample in samples:
        types = _question_types(sample.meta)
        entries = _question_entries(sample.meta)
        top = {k: v for k, v in sample.meta.items() if k not in CONVERSATION_KEYS}
        image = sample.images[0] if sample.images else None
        turns = sample.conversation
        asked = 0
        for index, (turn, reply) in enumerate(zip(turns, turns[1:])):
            if turn["role"] != "user" or reply["role"] != "assistant":
                continue
            question = turn["content"].replace(IMAGE_MARKER, "").strip()
            history = [{"role": t["role"], "content": t["content"]} for t in turns[:index]]
            yield VQAQuestion(sample.key, image, question, reply["content"].strip(), types.get(question),
                              turn=asked, history=history, content=turn["content"],
                              fields={**top, **entries.get(question, {})})
            asked += 1


def _question_entries(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """question text -> its entry of the sample json's `questions` list (fields like type, answer, colour)."""
    questions = meta.get("questions")
    if not isinstance(questions, list):
        return {}
    return {q["question"].strip(): q for q in questions if isinstance(q, dict) and isinstance(q.get("question"), str)}


def _question_types(meta: dict[str, Any]) -> dict[str, str]:
    """question text -> type, from a `questions` list in the sample's json (the shapes data records one)."""
    questions = meta.get("questions")
    if not isinstance(questions, list):
        return {}
    return {q["question"].strip(): q["type"] for q in questions
            if isinstance(q, dict) and isinstance(q.get("question"), str) and isinstance(q.get("type"), str)}


def caption_items(path: str | list, limit: int | None = None,
                  handler: BadSampleHandler | None = None) -> list[CaptionItem]:
    """Images of caption shards with every reference caption (json `captions`, else the txt caption)."""
    items = (CaptionItem(s.key, s.images[0], list(s.meta["references"]))
             for s in read_samples(path, "caption", handler))
    return list(itertools.islice(items, limit))


def text_documents(path: str | list, limit: int | None = None,
                   handler: BadSampleHandler | None = None) -> list[str]:
    return [s.text for s in itertools.islice(read_samples(path, "text", handler), limit)]
