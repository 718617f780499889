"""mmllm's own chat template: conversations -> token ids and labels, for training and for generation prompts
alike (a checkpoint imported with its own template uses data_pipelines.chat.jinja_template, behind the same
interface).

Each turn is `<|im_start|>` ROLE `\\n` content `<|im_end|>` `\\n`. Segments are tokenized separately and
concatenated, so turn boundaries are exact and never merge into a neighbour's BPE tokens. Each `<image>` in
content becomes `tokens_per_image` copies of `<|image|>` (inside Idefics3's markup tokens with image_markup
idefics3, one block per tile with image splitting: data_pipelines.chat.image_layout). Only assistant content
and its `<|im_end|>` are supervised. The conversations themselves (schema, LLaVA and OpenAI rows) are
data_pipelines.chat.conversation's.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from tokenizers import Tokenizer

from data_pipelines.chat import special_tokens as st
from data_pipelines.chat.conversation import (
    IGNORE_INDEX,
    Conversation,
    Grid,
    NoSupervisedTokens,
    RenderedTurn,
    count_image_markers,
    validate_conversation,
)
from data_pipelines.chat.image_layout import check_markup_tokens, image_layout, token_id
from data_pipelines.chat.special_tokens import TokenIds


class ChatTemplate:
    """Renders conversations with one tokenizer; the only code that lays out turns, in training and inference."""

    def __init__(self, tokenizer: Tokenizer, token_ids: TokenIds, tokens_per_image: int, image_markup: str = "none"):
        if tokens_per_image < 0:
            raise ValueError(f"tokens_per_image must not be negative, got {tokens_per_image}")
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
