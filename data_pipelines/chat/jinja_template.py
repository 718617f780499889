"""A checkpoint's own chat template: conversations laid out by its Hugging Face Jinja `chat_template`, for models
imported from transformers (SmolVLM, Idefics3), in training and in generation prompts alike.

The same interface as `chat.ChatTemplate` (render_turns, render_prompt, encode_text, answer_start), so the
processor does not know which template it holds. The template is rendered in a sandbox, as transformers does;
turn boundaries come from rendering the conversation one turn longer at a time (a template whose output for
fewer turns is not a prefix of its output for more is refused), and the supervised part of an assistant turn
is what follows the generation prompt up to and including the first stop token (`<end_of_utterance>`). Each
`<image>` the template writes becomes the image's markup and `tokens_per_image` image tokens, then the whole
text is tokenized at once, as transformers' processor does, so imported models see exactly their own ids.
Unlike mmllm's own template, special-token strings in the text are read as special tokens here (the checkpoint
was trained that way).
"""

from __future__ import annotations

import bisect
import itertools
import json
from datetime import datetime
from typing import Any, Sequence

from tokenizers import Tokenizer

from data_pipelines.chat import special_tokens as st
from data_pipelines.chat.conversation import (
    IGNORE_INDEX,
    Conversation,
    Grid,
    NoSupervisedTokens,
    RenderedTurn,
    validate_conversation,
)
from data_pipelines.chat.image_layout import check_markup_tokens, image_layout, token_id
from data_pipelines.chat.special_tokens import SpecialIds


def parts_of_content(content: str) -> list[dict[str, str]]:
    """Content with `<image>` markers -> transformers' content parts; the inverse of chat.content_of_parts, so the
    newline that joins a marker to its text is not part of the text ("<image>\\nQ" -> [image, text "Q"])."""
    parts: list[dict[str, str]] = []
    pieces = content.split(st.IMAGE_MARKER)
    for index, piece in enumerate(pieces):
        if index:
            parts.append({"type": "image"})
            if piece.startswith("\n"):
                piece = piece[1:]
        if index < len(pieces) - 1 and piece.endswith("\n"):
            piece = piece[:-1]
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def compile_template(source: str):
    """The Jinja template in a sandbox with the helpers transformers gives chat templates."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
               sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    try:
        return environment.from_string(source)
    except TemplateError as error:
        raise ValueError(f"the model's chat template does not compile: {error}") from error


class JinjaChatTemplate:
    """Renders conversations with a checkpoint's Jinja chat template; see the module docstring."""

    def __init__(self, tokenizer: Tokenizer, source: str, ids: SpecialIds, tokens_per_image: int,
                 image_markup: str = "none"):
        if tokens_per_image < 0:
            raise ValueError(f"tokens_per_image must not be negative, got {tokens_per_image}")
        if tokenizer.encode_special_tokens:  # a prepared tokenizer reads "<image>" in text as text; templates mean tokens
            tokenizer = Tokenizer.from_str(tokenizer.to_str())
            tokenizer.encode_special_tokens = False
        self.tokenizer = tokenizer
        self.template = compile_template(source)
        self.ids = ids
        self.tokens_per_image = tokens_per_image  # 0: a language model alone, whose template sees text only
        self.image_token = tokenizer.id_to_token(ids.image) if tokens_per_image else None
        if tokens_per_image and self.image_token is None:
            raise ValueError(f"the tokenizer has no token with the model's image id {ids.image}")
        check_markup_tokens(tokenizer, image_markup)  # idefics3: transformers' Idefics3Processor's layout
        self.image_markup = image_markup
        self.stop = tokenizer.id_to_token(ids.eos_ids[0]) if ids.eos_ids else None

    def image_text(self, grid: Grid = (0, 0)) -> str:
        """One image's text: its blocks of image tokens and the markup around them, as transformers writes it."""
        text = ""
        for piece in image_layout(self.image_markup, *grid):
            if piece.kind == "block":
                text += self.image_token * self.tokens_per_image
            else:
                if piece.kind == "token":
                    token_id(self.tokenizer, piece, *grid)  # ValueError when the tokenizer lacks it
                text += piece.value
        return text

    # --- text ------------------------------------------------------------------------------------------------

    def encode_text(self, text: str) -> list[int]:
        """Plain text -> ids, with no BOS/EOS."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def _render(self, conversation: Conversation, generation_prompt: bool = False,
                grids: Sequence[Grid] | None = None) -> str:
        """The template's text, each image marker replaced by its image's text (grids in marker order)."""
        # A VLM's template reads transformers' content parts; a text model's reads the content as one string.
        messages = [{"role": turn["role"],
                     "content": parts_of_content(turn["content"]) if self.tokens_per_image else turn["content"]}
                    for turn in conversation]
        text = self.template.render(messages=messages, add_generation_prompt=generation_prompt)
        first, *rest = text.split(st.IMAGE_MARKER)
        grids = itertools.chain(grids or (), itertools.repeat((0, 0)))  # unsplit past the given grids
        return first + "".join(self.image_text(grid) + piece for grid, piece in zip(grids, rest))

    def _encode(self, text: str):
        return self.tokenizer.encode(text, add_special_tokens=True)  # as transformers' processor tokenizes

    # --- conversations -------------------------------------------------------------------------------------------

    def render_turns(self, conversation: Conversation, num_images: int,
                     grids: Sequence[Grid] | None = None) -> list[RenderedTurn]:
        """A training conversation turn by turn, tokenized as one text; NoSupervisedTokens without an assistant."""
        validate_conversation(conversation, num_images)
        if not any(turn["role"] == "assistant" for turn in conversation):
            raise NoSupervisedTokens("conversation has no assistant turn, so no supervised token")
        # Character spans: turn k is rendered[k] .. rendered[k + 1]; its answer starts after the generation prompt.
        rendered = [self._render(conversation[:k], grids=grids) for k in range(len(conversation) + 1)]
        text = rendered[-1]
        for shorter, longer in zip(rendered, rendered[1:]):
            if not longer.startswith(shorter):
                raise ValueError("the model's chat template renders a conversation differently once it grows (its "
                                 "output for fewer turns is not a prefix): turns and answers cannot be told apart")
        answers = []
        for k, turn in enumerate(conversation):
            if turn["role"] != "assistant":
                continue
            prompt = self._render(conversation[:k], generation_prompt=True, grids=grids)
            start = len(prompt)
            if not text.startswith(prompt):
                raise ValueError("the model's chat template's generation prompt is not where its answers begin")
            end = len(rendered[k + 1])
            if self.stop and self.stop in text[start:end]:
                end = text.index(self.stop, start) + len(self.stop)
            answers.append((start, end))
        encoding = self._encode(text)
        turns = [RenderedTurn(turn["role"], [], []) for turn in conversation]
        starts = [len(r) for r in rendered[:-1]]  # where each turn's characters begin
        for token, (begin, finish) in zip(encoding.ids, encoding.offsets):
            k = min(max(bisect.bisect_right(starts, begin) - 1, 0), len(turns) - 1)  # BOS (0, 0) joins turn 0
            supervised = finish > begin and any(start <= begin and finish <= end for start, end in answers)
            turns[k].ids.append(token)
            turns[k].labels.append(token if supervised else IGNORE_INDEX)
        return turns

    def render_prompt(self, conversation: Conversation, num_images: int,
                      grids: Sequence[Grid] | None = None) -> list[int]:
        """The conversation so far (ending with a user turn) + the template's generation prompt."""
        validate_conversation(conversation, num_images, for_prompt=True)
        return self._encode(self._render(conversation, generation_prompt=True, grids=grids)).ids

    def answer_start(self, conversation: Conversation, grids: Sequence[Grid] | None = None) -> int | None:
        """Tokens before the first assistant turn's answer, or None when the conversation has none."""
        for k, turn in enumerate(conversation):
            if turn["role"] == "assistant":
                return len(self._encode(self._render(conversation[:k], generation_prompt=True, grids=grids)).ids)
        return None
