"""Answering VQA questions with a model in a turns mode (`in-context` or `alone`, see data_pipelines.read.eval_samples):
the one path of `mmllm eval --task vqa` and of the VQA accuracy that `mmllm fit` logs at validation."""

from __future__ import annotations

from typing import Sequence

from data_pipelines.read.eval_samples import TURNS, VQAQuestion


def answer_questions(vlm, questions: Sequence[VQAQuestion], turns: str, *, blind: bool = False,
                     batch_size: int = 16, progress=None, **sampling) -> list[str]:
    """The model's answer to each question, asked `turns`; blind replaces every image with a blank one."""
    if turns not in TURNS:
        raise ValueError(f"unknown turns mode {turns!r}; choose one of {TURNS}")
    blank = vlm.blank_image() if blind else None
    image_lists = [[] if q.image is None else [q.image if blank is None else blank] for q in questions]
    return vlm.chat_many([q.prompt(turns) for q in questions], image_lists, batch_size=batch_size,
                         progress=progress, **sampling)


def default_turns(questions: Sequence[VQAQuestion]) -> tuple[str, ...]:
    """Both modes when some question follows earlier turns of its conversation; else `alone` (then the same)."""
    return TURNS if any(q.history for q in questions) else ("alone",)
