"""Conversations as the project holds them: `{"role", "content"}` turns, checked and normalised from LLaVA and
OpenAI rows (the chat JSON of docs/formats.md), and the two conversations every model is asked (caption,
question). No tokenizer here: the templates in this package render these to ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_pipelines.chat import special_tokens as st

IGNORE_INDEX = -100  # label of a token that is not a target (torch cross_entropy's ignore_index)

Conversation = list[dict[str, str]]
Grid = tuple[int, int]  # (rows, cols) of an image's tiles; (0, 0) when it is not split

_LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


class NoSupervisedTokens(ValueError):
    """A training conversation with nothing to learn (no assistant turn): a bad sample, counted and skipped."""


def caption_conversation(caption: str) -> Conversation:
    """The caption sample: the fixed instruction about one image, answered by the caption."""
    return [
        {"role": "user", "content": st.IMAGE_MARKER + "\n" + st.CAPTION_INSTRUCTION},
        {"role": "assistant", "content": caption},
    ]


def question_conversation(question: str, with_image: bool = True) -> Conversation:
    """A single user turn asking about one image (the prompt of `mmllm ask` and of VQA evaluation)."""
    return [{"role": "user", "content": (st.IMAGE_MARKER + "\n" if with_image else "") + question}]


def content_of_parts(parts: list[Any]) -> str:
    """OpenAI content parts -> one string; parts are joined by newlines, so [image, text] == "<image>\\ntext"."""
    pieces = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            pieces.append(str(part.get("text", "")))
        elif isinstance(part, dict) and part.get("type") in ("image", "image_url"):
            pieces.append(st.IMAGE_MARKER)
        else:
            raise ValueError(f"unknown content part {part!r}; expected {{'type': 'text'|'image', ...}}")
    return "\n".join(pieces)


def normalise_conversation(rows: list[dict[str, Any]] | dict[str, Any]) -> Conversation:
    """LLaVA `{"from": human|gpt|system, "value"}` or OpenAI `{"role", "content"}` rows -> `{"role", "content"}`.

    OpenAI content may be a string or a list of `{"type": "text", "text"}` / `{"type": "image"}` parts. A dict
    holding the rows under "conversations" or "messages" (a chat shard's JSON) is accepted too.
    """
    if isinstance(rows, dict):
        rows = rows.get("conversations", rows.get("messages"))
    if not isinstance(rows, list):
        raise ValueError("a conversation must be a list of turns")
    turns = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"turn {index} is {type(row).__name__}, not a dict")
        if "from" in row:
            role, content = _LLAVA_ROLES.get(str(row["from"]).lower()), row.get("value")
            source_role = row["from"]
        elif "role" in row:
            role, content = str(row["role"]).lower(), row.get("content")
            source_role = row["role"]
        else:
            raise ValueError(f"turn {index} has neither 'from' (LLaVA) nor 'role' (OpenAI): {sorted(row)}")
        if role not in st.ROLE_TOKENS:
            raise ValueError(f"turn {index} has unknown role {source_role!r}")
        if isinstance(content, list):
            content = content_of_parts(content)
        if not isinstance(content, str):
            raise ValueError(f"turn {index} has no text content")
        turns.append({"role": role, "content": content})
    return turns


def count_image_markers(conversation: Conversation) -> int:
    return sum(turn["content"].count(st.IMAGE_MARKER) for turn in conversation)


def validate_conversation(conversation: Conversation, num_images: int, for_prompt: bool = False) -> None:
    """ValueError unless: an optional leading system turn, then user/assistant alternating from a user turn
    (ending on a user turn for a prompt), and as many `<image>` markers as images."""
    if not conversation:
        raise ValueError("empty conversation")
    roles = []
    for index, turn in enumerate(conversation):
        if turn.get("role") not in st.ROLE_TOKENS or not isinstance(turn.get("content"), str):
            raise ValueError(f"turn {index} must be {{'role': user|assistant|system, 'content': str}}, got {turn!r}")
        roles.append(turn["role"])
    dialogue = roles[1:] if roles[0] == "system" else roles
    for index, role in enumerate(dialogue):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"turns must go [system], user, assistant, user, ...; got {roles}")
    if for_prompt and (not dialogue or dialogue[-1] != "user"):
        raise ValueError(f"a generation prompt must end with a user turn; got {roles}")
    markers = count_image_markers(conversation)
    if markers != num_images:
        raise ValueError(f"conversation has {markers} {st.IMAGE_MARKER} markers but {num_images} images were given")


@dataclass
class RenderedTurn:
    """One turn's tokens; labels are IGNORE_INDEX except on assistant content and its <|im_end|>."""

    role: str
    ids: list[int]
    labels: list[int]
