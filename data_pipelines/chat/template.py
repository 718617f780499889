"""mmllm's own chat template: conversations -> token ids and labels, for training and for generation prompts
alike (a checkpoint imported with its own template uses data_pipelines.chat.jinja_template, behind the same interface).

Each turn is `<|im_start|>` ROLE `\\n` content `<|im_end|>` `\\n`. Segments are tokenized separately and
concatenated, so turn boundaries are exact and never merge into a neighbour's BPE tokens. Each `<image>` in
content becomes `tokens_per_image` copies of `<|image|>` (inside Idefics3's markup tokens with image_markup
idefics3, one block per tile with image splitting: data_pipelines.chat.image_layout). Only assistant content and its `<|im_end|>` are supervised. This module also normalises LLaVA and OpenAI conversation rows to `{"role", "content"}` (the chat
JSON of docs/formats.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from tokenizers import Tokenizer

from data_pipelines.chat import special_tokens as st
from data_pipelines.chat.image_layout import check_markup_tokens, image_layout, token_id
from data_pipelines.chat.tokenizer import TokenIds

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


class ChatTemplate:
    """Renders conversations with one tokenizer; the only code that lays out turns, in training and inference."""

    def __init__(self, tokenizer: Tokenizer, token_ids: TokenIds, tokens_per_image: int, image_markup: str = "none"):
        if tokens_per_image < 1:
            raise ValueError(f"tokens_per_image must be positive, got {tokens_per_image}")
        self.tokenizer = tokenizer
        self.token_ids = token_ids
        self.tokens_per_image = tokens_per_image
        self.newline = self.encode_text("\n")
        check_markup_tokens(tokenizer, image_markup)
        self.image_markup = image_markup

    def encode_text(self, text: str) -> list[int]:
        """Plain text -> ids, with no BOS/EOS and special-token strings read as text."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def encode_image(self, grid: Grid = (0, 0)) -> list[int]:
        """One image's ids: its blocks of tokens_per_image image ids and the markup around them."""
        ids: list[int] = []
        for piece in image_layout(self.image_markup, *grid):
            if piece.kind == "block":
                ids.extend([self.token_ids.image] * self.tokens_per_image)
            elif piece.kind == "text":
                ids.extend(self.encode_text(piece.value))
            else:
                ids.append(token_id(self.tokenizer, piece, *grid))
        return ids

    def encode_content(self, content: str, grids: Iterator[Grid] | None = None) -> list[int]:
        """Turn content -> ids; each `<image>` becomes its image's ids (grids: one per marker, in order)."""
        ids: list[int] = []
        for index, piece in enumerate(content.split(st.IMAGE_MARKER)):
            if index:
                ids.extend(self.encode_image(next(grids) if grids is not None else (0, 0)))
            ids.extend(self.encode_text(piece))
        return ids

    def header(self, role: str) -> list[int]:
        """`<|im_start|>` ROLE `\\n`: opens a turn (and, for the assistant, is the generation prompt's tail)."""
        return [self.token_ids.turn_start, self.token_ids.role(role)] + self.newline

    def render_turn(self, turn: dict[str, str], grids: Iterator[Grid] | None = None) -> RenderedTurn:
        header = self.header(turn["role"])
        content = self.encode_content(turn["content"], grids) + [self.token_ids.turn_end]
        ids = header + content + self.newline
        if turn["role"] == "assistant":
            labels = [IGNORE_INDEX] * len(header) + content + [IGNORE_INDEX] * len(self.newline)
        else:
            labels = [IGNORE_INDEX] * len(ids)
        return RenderedTurn(turn["role"], ids, labels)

    def render_turns(self, conversation: Conversation, num_images: int,
                     grids: Sequence[Grid] | None = None) -> list[RenderedTurn]:
        """A training conversation turn by turn; NoSupervisedTokens when it has no assistant turn.
        grids: each image's tiles (rows, cols), in marker order; None: no image is split."""
        validate_conversation(conversation, num_images)
        if not any(turn["role"] == "assistant" for turn in conversation):
            raise NoSupervisedTokens("conversation has no assistant turn, so no supervised token")
        pending = iter(grids or [(0, 0)] * num_images)
        return [self.render_turn(turn, pending) for turn in conversation]

    def render(self, conversation: Conversation, num_images: int) -> tuple[list[int], list[int]]:
        """A training conversation -> (ids, labels) of equal length."""
        ids: list[int] = []
        labels: list[int] = []
        for turn in self.render_turns(conversation, num_images):
            ids.extend(turn.ids)
            labels.extend(turn.labels)
        return ids, labels

    def answer_start(self, conversation: Conversation, grids: Sequence[Grid] | None = None) -> int | None:
        """Tokens before the first assistant turn's answer, or None when the conversation has none."""
        offset = 0
        pending = iter(grids or [(0, 0)] * count_image_markers(conversation))
        for turn in conversation:
            if turn["role"] == "assistant":
                return offset + len(self.header("assistant"))
            offset += len(self.render_turn(turn, pending).ids)
        return None

    def render_prompt(self, conversation: Conversation, num_images: int,
                      grids: Sequence[Grid] | None = None) -> list[int]:
        """The conversation so far (ending with a user turn) + `<|im_start|><|assistant|>\\n`: what to generate from."""
        validate_conversation(conversation, num_images, for_prompt=True)
        pending = iter(grids or [(0, 0)] * num_images)
        ids: list[int] = []
        for turn in conversation:
            ids.extend(self.render_turn(turn, pending).ids)
        return ids + self.header("assistant")
