"""VQA questions read from chat shards, and the prompt each turns mode builds from them."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from data_pipelines.read.eval_samples import TURNS, vqa_questions
from data_pipelines.convert.writers import ShardWriter


def write_chats(folder, rows):
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(png, format="PNG")
    image = png.getvalue()
    with ShardWriter(folder, report=lambda *_: None) as writer:
        for key, conversation, with_image in rows:
            sample = {"json": {"conversations": conversation}}
            if with_image:
                sample["png"] = image
            writer.write(sample, key=key)


def test_each_question_keeps_its_turn_index_history_and_both_prompts(tmp_path):
    conversation = [
        {"from": "human", "value": "<image>\nWhat is on the left?"}, {"from": "gpt", "value": "a cup"},
        {"from": "human", "value": "How many cups are there?"}, {"from": "gpt", "value": "2"},
        {"from": "human", "value": "Is the cup red?"}, {"from": "gpt", "value": "yes"},
    ]
    text_only = [{"from": "human", "value": "What is on the left?"}, {"from": "gpt", "value": "a cup"}]
    write_chats(tmp_path, [("a", conversation, True), ("b", text_only, False)])
    questions = vqa_questions(tmp_path)
    assert [(q.key, q.turn, q.answer) for q in questions] == [("a", 0, "a cup"), ("a", 1, "2"), ("a", 2, "yes"),
                                                            ("b", 0, "a cup")]
    third = questions[2]
    assert third.prompt("in-context") == [
        {"role": "user", "content": "<image>\nWhat is on the left?"}, {"role": "assistant", "content": "a cup"},
        {"role": "user", "content": "How many cups are there?"}, {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Is the cup red?"},
    ]
    assert third.prompt("alone") == [{"role": "user", "content": "<image>\nIs the cup red?"}]
    first = questions[0]
    assert first.prompt("in-context") == first.prompt("alone") == [
        {"role": "user", "content": "<image>\nWhat is on the left?"}]
    no_image = questions[3]  # a text-only chat: no image marker is added
    assert no_image.image is None and no_image.prompt("alone") == [{"role": "user", "content": "What is on the left?"}]
    with pytest.raises(ValueError, match="turns mode"):
        third.prompt("both")
    assert TURNS == ("in-context", "alone")
