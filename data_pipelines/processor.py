"""The processor: a user's images and text -> model inputs, by the same code in training and in `mmllm ask`.
Batching the encoded samples into the tensors VLM.forward takes is data_pipelines.batching's.

It holds the tokenizer, the chat template and the image transform. Training samples come out with labels
(`encode_conversation`, `encode_caption`, `encode_text`, `encode_text_chunks`); inference prompts come out
with the generation prompt appended (`encode_prompt`, `encode_question`, `encode_text_prompt`). Truncation to
`max_length` never cuts an image's block of tokens: it drops whole trailing turns, or cuts the answer text, and drops the images it no longer
shows. mmllm builds one from a model config: `Processor(tokenizer, image_size=..., tokens_per_image=...,
image_mean=..., image_std=..., resize=..., max_length=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from tokenizers import Tokenizer

from data_pipelines.chat import special_tokens as st
from data_pipelines.chat.conversation import (
    IGNORE_INDEX,
    Conversation,
    Grid,
    NoSupervisedTokens,
    RenderedTurn,
    caption_conversation,
    question_conversation,
    validate_conversation,
)
from data_pipelines.chat.jinja_template import JinjaChatTemplate
from data_pipelines.chat.special_tokens import SpecialIds, TokenIds
from data_pipelines.chat.template import ChatTemplate
from data_pipelines.chat.tokenizer import load_tokenizer, prepared
from data_pipelines.images import DEFAULT_MAX_PIXELS, ImageSource, ImageTransform, ResizePolicy, load_image
from data_pipelines.moved import name_getter
from data_pipelines.video import VideoOptions


@dataclass
class EncodedSample:
    """One sample's model inputs before batching."""

    input_ids: list[int]
    labels: list[int]  # aligned with input_ids; IGNORE_INDEX where not a target
    pixel_values: torch.Tensor | None  # (N, 3, S, S), one per image block of input_ids in order; None if N == 0
    prefix_length: int  # tokens before the first answer token (the prompt, for prefix attention)
    kind: str  # "caption" | "chat" | "text": the kind of its source, for the loss per kind
    # "causal" (labels: next-token targets) or "mlm" (labels: the hidden tokens at their own positions, attention
    # bidirectional over the whole sample; data_pipelines.masking)
    objective: str = "causal"
    group: str | None = None  # its group of data.balance / model.group_dro's field (data_pipelines.balance)
    # A preference pair: this sample is the prompt + chosen answer, `rejected` the prompt + rejected answer
    # (batched as two rows of one batch, data_pipelines.batching)
    rejected: "EncodedSample | None" = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_images(self) -> int:
        return 0 if self.pixel_values is None else self.pixel_values.shape[0]


class NoImages(ValueError):
    """An image given to a language model without a vision tower."""


class Processor:
    """Tokenizer + chat template + image transform; see the module docstring."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_size: int | None,
        tokens_per_image: int,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        resize: ResizePolicy = "squash",
        max_length: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        longest_edge: int | None = None,
        chat_template: str | None = None,
        special_ids: SpecialIds | None = None,
        image_markup: str = "none",
        image_splitting: bool = False,
    ):
        if chat_template is None:
            # mmllm's own template: ids by mmllm's token names (ValueError if one is missing); no BOS
            # post-processing, no special-token parsing (a copy when the caller's tokenizer is not set so).
            token_ids = TokenIds.from_tokenizer(tokenizer)
            self.token_ids: TokenIds | None = token_ids
            self.ids = SpecialIds(token_ids.image, token_ids.pad, token_ids.eos_ids, token_ids.end_of_text)
            self.tokenizer = tokenizer = prepared(tokenizer)
            self.template = ChatTemplate(tokenizer, token_ids, tokens_per_image, image_markup)
        else:
            # A checkpoint's own template (data_pipelines.chat.jinja_template): its ids come from the model config.
            if special_ids is None:
                raise ValueError("a processor with a model's own chat template needs its special ids")
            end_of_text = next(i for i in (special_ids.end_of_text, tokenizer.token_to_id(st.END_OF_TEXT),
                                           special_ids.eos_ids[-1]) if i is not None)
            self.ids = SpecialIds(special_ids.image, special_ids.pad, list(special_ids.eos_ids), end_of_text)
            self.token_ids = None
            self.tokenizer = tokenizer
            self.template = JinjaChatTemplate(tokenizer, chat_template, self.ids, tokens_per_image, image_markup)
        if image_splitting and image_markup != "idefics3":
            raise ValueError("image splitting needs image_markup idefics3 (its tiles are told apart by row/col tokens)")
        # image_size None: a language model alone, which reads no images (NoImages for any given)
        self.transform = (ImageTransform(image_size, image_mean, image_std, resize, longest_edge, image_splitting)
                          if image_size is not None else None)
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length
        self.max_pixels = max_pixels
        # PIL image -> PIL image before the resize (data_pipelines.augment), on training processors only
        self.augment: Callable[[Image.Image], Image.Image] | None = None
        self.video = VideoOptions()  # how a clip becomes frames (data.video), applied where samples are decoded

    @classmethod
    def from_file(cls, tokenizer_path: str | Path, **fields: Any) -> "Processor":
        """A processor over `tokenizer.json` at tokenizer_path (special tokens added if missing)."""
        tokenizer, _ = load_tokenizer(tokenizer_path)
        return cls(tokenizer, **fields)

    @property
    def pad_id(self) -> int:
        return self.ids.pad

    @property
    def eos_ids(self) -> list[int]:
        return list(self.ids.eos_ids)

    # --- images -----------------------------------------------------------------------------------------------

    def pixel_values(self, images: Sequence[ImageSource]) -> torch.Tensor | None:
        """Images (bytes, paths or PIL) -> (N, 3, S, S), every tile of every image in prompt order, or None for
        no image. Raises ImageError subclasses."""
        return self.tiled(images)[0]

    def tiled(self, images: Sequence[ImageSource]) -> tuple[torch.Tensor | None, list[Grid]]:
        """Images -> ((N, 3, S, S) or None, each image's (rows, cols) of tiles, (0, 0) when it is not split)."""
        if not images:
            return None, []
        if self.transform is None:
            raise NoImages("this model is a language model alone: it reads no images")
        decoded = [load_image(image, self.max_pixels) for image in images]
        if self.augment is not None:
            decoded = [self.augment(image) for image in decoded]
        tiled = [self.transform.tiles(image) for image in decoded]
        return torch.cat([pixels for pixels, _ in tiled]), [grid for _, grid in tiled]

    # --- training samples -------------------------------------------------------------------------------------

    def encode_conversation(
        self, conversation: Conversation, images: Sequence[ImageSource] = (), kind: str = "chat"
    ) -> EncodedSample:
        """A training conversation with its images (in marker order) -> ids, labels, pixels.

        ValueError when markers and images disagree; NoSupervisedTokens when nothing is left to learn.
        """
        validate_conversation(conversation, len(images))  # before any image is decoded
        pixels, grids = self.tiled(list(images))
        turns = self.template.render_turns(conversation, len(images), grids)
        ids, labels = self._truncate(turns)
        num_blocks = len(self._image_blocks(ids))  # truncation drops whole images, so whole runs of tiles
        return EncodedSample(
            input_ids=ids,
            labels=labels,
            pixel_values=pixels[:num_blocks] if num_blocks else None,
            prefix_length=next(i for i, label in enumerate(labels) if label != IGNORE_INDEX),
            kind=kind,
        )

    def encode_caption(self, caption: str, image: ImageSource) -> EncodedSample:
        return self.encode_conversation(caption_conversation(caption), [image], kind="caption")

    def encode_text(self, text: str) -> EncodedSample:
        """A text document + <|endoftext|>, every token supervised, truncated to max_length."""
        ids = self.template.encode_text(text) + [self.ids.end_of_text]
        if self.max_length is not None:
            ids = ids[: self.max_length]
        return self._text_sample(ids)

    def encode_text_chunks(self, text: str) -> list[EncodedSample]:
        """A long document + <|endoftext|> split into consecutive pieces of at most max_length tokens."""
        ids = self.template.encode_text(text) + [self.ids.end_of_text]
        size = self.max_length or len(ids)
        chunks = [ids[start:start + size] for start in range(0, len(ids), size)]
        # A one-token piece has no next-token target (a sample's first token is never predicted).
        return [self._text_sample(chunk) for chunk in chunks if len(chunk) > 1] or [self._text_sample(ids)]

    def encode_sample(self, sample: Any) -> EncodedSample:
        """A shards.Sample (kind, conversation, text, images) -> EncodedSample; text is truncated."""
        if sample.kind == "text":
            return self.encode_text(sample.text)
        if sample.kind == "preference":
            return self.encode_preference(sample.conversation, sample.meta["chosen"], sample.meta["rejected"],
                                          sample.images)
        return self.encode_conversation(sample.conversation, sample.images, kind=sample.kind)

    def encode_preference(self, prompt: Conversation, chosen: str, rejected: str,
                          images: Sequence[ImageSource] = ()) -> EncodedSample:
        """The prompt with its chosen answer (supervised: the answer only), carrying the prompt with its rejected
        answer as `.rejected`."""
        pair = [self.encode_conversation([*prompt, {"role": "assistant", "content": answer}], images,
                                         kind="preference") for answer in (chosen, rejected)]
        pair[0].rejected = pair[1]
        return pair[0]

    # --- masked language modelling (data_pipelines.masking) -----------------------------------------------------

    @property
    def mask_id(self) -> int | None:
        """The id of `<mask>`, or None when the tokenizer has none (a model not trained with the MLM objective)."""
        return self.tokenizer.token_to_id(st.MASK)

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of every added special token (image, turns, roles, padding, end of text, mask): never masked."""
        ids = getattr(self, "_special_token_ids", None)
        if ids is None:
            ids = self._special_token_ids = frozenset(
                i for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special)
        return ids

    def encode_masked(self, text: str, image: ImageSource | None = None) -> tuple[EncodedSample, list[int]]:
        """A text with `<mask>` markers (one token each) -> the MLM input as training builds it, and the masked
        positions: with an image, a caption sample (the image, the caption instruction, the text as the caption);
        without, a text document. Whitespace before a marker goes with the hidden token (" red" is one token), as
        in RoBERTa's fill-mask. ValueError without a marker or a `<mask>` token."""
        if self.mask_id is None:
            raise ValueError("this model's tokenizer has no <mask> token: it was not trained with the MLM objective")
        pieces = text.split(st.MASK)
        if len(pieces) < 2:
            raise ValueError(f"the text has no {st.MASK} to fill")
        placeholder = "\x00"  # stands for each marker while the template renders the text
        if placeholder in text:
            raise ValueError("the text holds a NUL character")
        rendered = placeholder.join(piece.rstrip(" ") if i < len(pieces) - 1 else piece
                                    for i, piece in enumerate(pieces))
        ids: list[int] = []
        for index, part in enumerate(rendered.split(placeholder)):
            if index:
                ids.append(self.mask_id)
            ids.extend(self.template.encode_text(part))
        if image is None:
            sample = EncodedSample(ids + [self.ids.end_of_text], [IGNORE_INDEX] * (len(ids) + 1), None, 0, "text",
                                   "mlm")
        else:
            sample = self.encode_caption("\x00", image)  # the caption slot, then the text's ids put in its place
            slot = self.template.encode_text("\x00")
            start = next(i for i in range(len(sample.input_ids)) if sample.input_ids[i:i + len(slot)] == slot)
            input_ids = sample.input_ids[:start] + ids + sample.input_ids[start + len(slot):]
            sample = EncodedSample(input_ids, [IGNORE_INDEX] * len(input_ids), sample.pixel_values,
                                   sample.prefix_length, "caption", "mlm")
        if self.max_length is not None and len(sample) > self.max_length:
            raise ValueError(f"the text is {len(sample)} tokens; the model takes {self.max_length}")
        return sample, [i for i, token in enumerate(sample.input_ids) if token == self.mask_id]

    # --- inference --------------------------------------------------------------------------------------------

    def encode_prompt(self, conversation: Conversation, images: Sequence[ImageSource] = ()) -> EncodedSample:
        """A conversation ending with a user turn -> the generation prompt (no targets). ValueError if too long.

        prefix_length is, as in training, the tokens before the first answer: the whole prompt for a
        single question, the part before the first assistant turn for a conversation with history.
        """
        validate_conversation(conversation, len(images), for_prompt=True)  # before any image is decoded
        pixels, grids = self.tiled(list(images))
        ids = self.template.render_prompt(conversation, len(images), grids)
        self._check_prompt_room(ids)
        answer_start = self.template.answer_start(conversation, grids)
        prefix_length = len(ids) if answer_start is None else answer_start
        return EncodedSample(ids, [IGNORE_INDEX] * len(ids), pixels, prefix_length, "chat")

    def encode_text_prompt(self, text: str) -> EncodedSample:
        """A plain-text generation prompt (`mmllm generate`): the text's tokens, no targets, no end of text.
        ValueError if it is empty or leaves no room to generate."""
        ids = self.template.encode_text(text)
        if not ids:
            raise ValueError("empty prompt")
        self._check_prompt_room(ids)
        return EncodedSample(ids, [IGNORE_INDEX] * len(ids), None, 0, "text")

    def encode_question(self, question: str, image: ImageSource | None = None) -> EncodedSample:
        """The prompt of `mmllm ask` / VQA: one user turn with one image (if given) and the question."""
        conversation = question_conversation(question, with_image=image is not None)
        return self.encode_prompt(conversation, [image] if image is not None else [])

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text, special tokens (image, turn, role, padding) skipped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # --- internals --------------------------------------------------------------------------------------------

    def _check_prompt_room(self, ids: list[int]) -> None:
        if self.max_length is not None and len(ids) >= self.max_length:
            raise ValueError(
                f"prompt is {len(ids)} tokens; the model takes {self.max_length}, leaving no room for an answer"
            )

    def _text_sample(self, ids: list[int]) -> EncodedSample:
        if len(ids) < 2:
            raise NoSupervisedTokens("empty text: a one-token sample has no next-token target")
        return EncodedSample(ids, list(ids), None, 0, "text")

    def _image_blocks(self, ids: list[int]) -> list[tuple[int, int]]:
        """(start, end) of each image's tokens; text never yields image ids, so runs split into whole blocks."""
        blocks, position = [], 0
        while position < len(ids):
            if ids[position] == self.ids.image:
                blocks.append((position, position + self.tokens_per_image))
                position += self.tokens_per_image
            else:
                position += 1
        return blocks

    def _truncate(self, turns: list[RenderedTurn]) -> tuple[list[int], list[int]]:
        """Fit rendered turns in max_length without cutting an image block.

        First choice: the longest run of whole leading turns that fits and still ends with an assistant turn.
        Otherwise cut at max_length (moved back to the start of an image block it would split); the sample
        must keep at least one supervised token, else NoSupervisedTokens.
        """
        ids = [token for turn in turns for token in turn.ids]
        labels = [label for turn in turns for label in turn.labels]
        limit = self.max_length
        if limit is None or len(ids) <= limit:
            return ids, labels
        length, whole_turns_end = 0, 0
        for turn in turns:
            length += len(turn.ids)
            if length > limit:
                break
            if turn.role == "assistant":
                whole_turns_end = length
        if whole_turns_end:
            return ids[:whole_turns_end], labels[:whole_turns_end]
        cut = limit
        for start, end in self._image_blocks(ids):
            if start < cut < end:
                cut = start
        if all(label == IGNORE_INDEX for label in labels[:cut]):
            raise NoSupervisedTokens(
                f"sample is {len(ids)} tokens and its prompt alone does not fit in max_length {limit}"
            )
        return ids[:cut], labels[:cut]


# `data_pipelines.processor.collate` and `.pack`, as docs/formats.md named them until 2026-12-05, are
# data_pipelines.batching's now: an alias with a warning, for one release.
__getattr__ = name_getter(__name__)
