"""Processor: the same token layout for training and prompts, pixels in order, truncation never splits an image."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from data_pipelines.chat import special_tokens as st
from data_pipelines.chat.conversation import IGNORE_INDEX, NoSupervisedTokens, caption_conversation
from data_pipelines.chat.tokenizer import load_tokenizer, train_tokenizer
from data_pipelines.images import ImageTransform, load_image
from data_pipelines.processor import Processor

TOKENS_PER_IMAGE = 4
FIELDS = dict(image_size=16, tokens_per_image=TOKENS_PER_IMAGE, image_mean=[0.5] * 3, image_std=[0.5] * 3)
CONVERSATION = [
    {"role": "user", "content": "<image>\nWhat is on the left?"},
    {"role": "assistant", "content": "A red circle."},
    {"role": "user", "content": "And here? <image><image>"},
    {"role": "assistant", "content": "A blue square and a green triangle, both small."},
]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [turn["content"] for turn in CONVERSATION] * 10 + ["plain text about shapes"] * 10
    return train_tokenizer(corpus, vocab_size=320)


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), colour).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = [_png((255, 0, 0)), _png((0, 0, 255)), _png((0, 255, 0))]


def _image_block_lengths(ids: list[int], image_id: int) -> list[int]:
    runs, length = [], 0
    for token in ids + [None]:
        if token == image_id:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def test_pixel_values_are_each_image_transformed_in_order(tokenizer):
    processor = Processor(tokenizer, **FIELDS)
    sample = processor.encode_conversation(CONVERSATION, IMAGES)
    transform = ImageTransform(16, [0.5] * 3, [0.5] * 3)
    assert sample.pixel_values.shape == (3, 3, 16, 16)
    for pixels, image in zip(sample.pixel_values, IMAGES):
        assert torch.equal(pixels, transform(load_image(image)))
    assert sample.input_ids.count(processor.token_ids.image) == 3 * TOKENS_PER_IMAGE
    assert sample.kind == "chat" and sample.num_images == 3


def test_training_prompt_prefix_equals_the_inference_prompt(tokenizer):
    processor = Processor(tokenizer, **FIELDS)
    caption = processor.encode_caption("a red circle", IMAGES[0])
    prompt = processor.encode_question(st.CAPTION_INSTRUCTION, IMAGES[0])
    assert caption.kind == "caption"
    assert caption.input_ids[: caption.prefix_length] == prompt.input_ids
    assert prompt.prefix_length == len(prompt.input_ids)
    assert set(prompt.labels) == {IGNORE_INDEX}
    assert torch.equal(caption.pixel_values, prompt.pixel_values)
    answer = [t for t, label in zip(caption.input_ids, caption.labels) if label != IGNORE_INDEX]
    assert answer[-1] == processor.token_ids.turn_end and processor.decode(answer) == "a red circle"


def test_prompt_with_history_has_the_training_prefix_length(tokenizer):
    processor = Processor(tokenizer, **FIELDS)
    training = processor.encode_conversation(CONVERSATION, IMAGES)
    prompt = processor.encode_prompt(CONVERSATION[:3], IMAGES)
    assert training.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    assert prompt.prefix_length == training.prefix_length
    assert training.labels[training.prefix_length - 1] == IGNORE_INDEX != training.labels[training.prefix_length]


def test_truncation_drops_whole_trailing_turns_and_their_images(tokenizer):
    full = Processor(tokenizer, **FIELDS).encode_conversation(CONVERSATION, IMAGES)
    first_exchange = Processor(tokenizer, **FIELDS).encode_conversation(CONVERSATION[:2], IMAGES[:1])
    truncated = Processor(tokenizer, **FIELDS, max_length=len(full) - 1).encode_conversation(CONVERSATION, IMAGES)
    assert truncated.input_ids == first_exchange.input_ids
    assert truncated.labels == first_exchange.labels
    assert torch.equal(truncated.pixel_values, first_exchange.pixel_values)


def test_truncation_at_every_length_never_splits_an_image_block(tokenizer):
    conversation = [
        {"role": "user", "content": "Look: <image> and <image>"},
        {"role": "assistant", "content": "Here is a drawing <image> of a red circle."},
    ]
    full = Processor(tokenizer, **FIELDS).encode_conversation(conversation, IMAGES)
    outcomes = set()
    for limit in range(1, len(full) + 1):
        processor = Processor(tokenizer, **FIELDS, max_length=limit)
        try:
            sample = processor.encode_conversation(conversation, IMAGES)
        except NoSupervisedTokens:
            outcomes.add("rejected")
            assert full.labels[:limit].count(IGNORE_INDEX) == limit  # only when no answer token fits
            continue
        outcomes.add(sample.num_images)
        assert len(sample) <= limit
        assert sample.input_ids == full.input_ids[: len(sample)] and sample.labels == full.labels[: len(sample)]
        blocks = _image_block_lengths(sample.input_ids, processor.token_ids.image)
        assert blocks == [TOKENS_PER_IMAGE] * sample.num_images
        assert torch.equal(sample.pixel_values, full.pixel_values[: sample.num_images])
        assert any(label != IGNORE_INDEX for label in sample.labels)
    assert outcomes == {"rejected", 2, 3}  # answers cut before and after the assistant's own image


def test_prompt_that_cannot_fit_raises(tokenizer):
    processor = Processor(tokenizer, **FIELDS, max_length=TOKENS_PER_IMAGE + 5)
    with pytest.raises(ValueError, match="no room for an answer"):
        processor.encode_question("What is on the left?", IMAGES[0])


def test_image_marker_mismatch_is_caught_before_images_are_decoded(tokenizer):
    processor = Processor(tokenizer, **FIELDS)
    with pytest.raises(ValueError, match="3 <image> markers but 2 images"):
        processor.encode_conversation(CONVERSATION, [b"never decoded", b"never decoded"])


def test_text_sample_supervises_every_token_and_ends_with_end_of_text(tokenizer):
    processor = Processor(tokenizer, **FIELDS)
    sample = processor.encode_text("plain text about shapes")
    assert sample.labels == sample.input_ids
    assert sample.input_ids[-1] == processor.token_ids.end_of_text
    assert (sample.kind, sample.prefix_length, sample.pixel_values) == ("text", 0, None)
    assert processor.decode(sample.input_ids) == "plain text about shapes"
    assert len(Processor(tokenizer, **FIELDS, max_length=5).encode_text("plain text about shapes " * 5)) == 5
    with pytest.raises(NoSupervisedTokens):
        processor.encode_text("")


def test_text_generation_prompt_is_the_training_text_without_its_end(tokenizer):
    processor = Processor(tokenizer, **FIELDS, max_length=8)
    prompt = processor.encode_text_prompt("plain text")
    assert prompt.input_ids == processor.encode_text("plain text").input_ids[:-1]
    assert set(prompt.labels) == {IGNORE_INDEX} and prompt.prefix_length == 0
    with pytest.raises(ValueError, match="empty prompt"):
        processor.encode_text_prompt("")
    with pytest.raises(ValueError, match="no room for an answer"):
        processor.encode_text_prompt("plain text about shapes " * 5)


def test_text_chunks_cover_the_document_within_max_length(tokenizer):
    processor = Processor(tokenizer, **FIELDS, max_length=7)
    text = "plain text about shapes, " * 6
    whole = Processor(tokenizer, **FIELDS).encode_text(text).input_ids
    chunks = processor.encode_text_chunks(text)
    assert all(1 < len(chunk) <= 7 for chunk in chunks)
    joined = [token for chunk in chunks for token in chunk.input_ids]
    assert whole[: len(joined)] == joined and len(whole) - len(joined) <= 1


def test_encode_sample_dispatches_on_kind(tokenizer):
    processor = Processor(tokenizer, **FIELDS)
    caption = SimpleNamespace(kind="caption", conversation=caption_conversation("a red circle"), text=None, images=IMAGES[:1])
    text = SimpleNamespace(kind="text", conversation=None, text="plain text", images=[])
    assert processor.encode_sample(caption).input_ids == processor.encode_caption("a red circle", IMAGES[0]).input_ids
    assert processor.encode_sample(text).kind == "text"


def test_decode_skips_special_tokens(tokenizer):
    processor = Processor(tokenizer, **FIELDS)
    sample = processor.encode_conversation(CONVERSATION[:2], IMAGES[:1])
    assert processor.decode(sample.input_ids) == "\n\nWhat is on the left?\n\nA red circle.\n"


def test_processor_from_file_matches_processor_from_tokenizer(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    from_file = Processor.from_file(path, **FIELDS)
    assert from_file.encode_conversation(CONVERSATION, IMAGES).input_ids == (
        Processor(tokenizer, **FIELDS).encode_conversation(CONVERSATION, IMAGES).input_ids
    )
    assert from_file.eos_ids == [tokenizer.token_to_id(st.TURN_END), tokenizer.token_to_id(st.END_OF_TEXT)]
    assert load_tokenizer(path)[1] == []


def test_processor_leaves_the_callers_tokenizer_as_it_was(tokenizer):
    from tokenizers import Tokenizer, processors

    # A Llama-style tokenizer.json adds BOS through its post-processor; the processor must not add it, and
    # must not change the caller's object either.
    theirs = Tokenizer.from_str(tokenizer.to_str())
    bos = theirs.token_to_id(st.END_OF_TEXT)
    theirs.post_processor = processors.TemplateProcessing(single=f"{st.END_OF_TEXT} $A",
                                                          special_tokens=[(st.END_OF_TEXT, bos)])
    before = theirs.to_str()
    processor = Processor(theirs, **FIELDS)
    assert theirs.to_str() == before and theirs.encode("a red").ids[0] == bos
    assert processor.encode_text_prompt("a red").input_ids == tokenizer.encode("a red",
                                                                                add_special_tokens=False).ids
