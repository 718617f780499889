"""Preference pairs from TRL's columns to a batch: `mmllm data from-preferences`'s converter (bad rows counted by
reason), the preference shard kind, the processor's pair and the batch that holds chosen rows before rejected ones."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from data_pipelines.batching import collate, pack
from data_pipelines.chat.conversation import IGNORE_INDEX
from data_pipelines.chat.tokenizer import train_tokenizer
from data_pipelines.convert.from_preferences import convert_preferences
from data_pipelines.processor import Processor
from data_pipelines.read.shards import detect_kind, read_samples

ROWS = [
    # TRL's standard form: strings, one image path
    {"prompt": "Is there a red circle?", "chosen": "no", "rejected": "yes", "images": ["a.png"], "id": 7},
    # TRL's conversational form, the image as a content part
    {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}],
     "chosen": [{"role": "assistant", "content": "blue"}], "rejected": [{"role": "assistant", "content": "red"}],
     "images": ["b.png"]},
    # text only, a system turn first
    {"prompt": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Sky colour?"}],
     "chosen": "blue", "rejected": "The sky is usually blue."},
]
BAD_ROWS = [
    ({"chosen": "a", "rejected": "b"}, "missing prompt"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "missing answer"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen equals rejected"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "images": ["gone.png"]}, "missing image"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "images": ["a.png", "b.png"]}, "several images"),
    ({"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"},
     "prompt not ending with a user turn"),
]


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("preferences")
    (root / "images").mkdir()
    (root / "images" / "a.png").write_bytes(_png((255, 0, 0)))
    (root / "images" / "b.png").write_bytes(_png((0, 0, 255)))
    lines = [json.dumps(row) for row in ROWS] + [json.dumps(row) for row, _ in BAD_ROWS] + ["{not json"]
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    stats = convert_preferences(root / "pairs.jsonl", root / "images", root / "shards", report=lambda *_: None)
    return root / "shards", stats


def test_the_converter_writes_good_rows_and_counts_bad_ones_by_reason(shards):
    folder, stats = shards
    assert stats.written == len(ROWS)
    expected = {reason: 1 for _, reason in BAD_ROWS}
    expected["bad json line"] = 1
    assert dict(stats.skipped) == expected
    assert detect_kind(folder) == "preference"
    samples = list(read_samples(folder, "preference"))
    assert [s.meta["chosen"] for s in samples] == ["no", "blue", "blue"]
    assert samples[0].conversation == [{"role": "user", "content": "<image>\nIs there a red circle?"}]
    assert samples[0].meta["id"] == 7 and len(samples[0].images) == 1
    assert samples[1].conversation[0]["content"] == "<image>\nWhat colour is it?" and samples[1].meta["rejected"] == "red"
    assert [t["role"] for t in samples[2].conversation] == ["system", "user"] and not samples[2].images


def test_a_pair_batches_chosen_rows_first_with_only_the_answers_supervised(shards):
    folder, _ = shards
    samples = list(read_samples(folder, "preference"))
    texts = [t["content"] for s in samples for t in s.conversation] + [s.meta[k] for s in samples
                                                                         for k in ("chosen", "rejected")]
    processor = Processor(train_tokenizer(texts * 5, vocab_size=300), image_size=16, tokens_per_image=4)
    encoded = [processor.encode_sample(sample) for sample in samples]
    batch = collate(encoded, processor.pad_id)
    assert batch["pairs"] == 3 and batch["input_ids"].shape[0] == 6
    assert batch["kinds"] == ["preference"] * 6
    assert batch["image_counts"].tolist() == [1, 1, 0, 1, 1, 0]  # each image twice: chosen row, rejected row
    assert batch["pixel_values"].shape[0] == 4
    for row, sample in enumerate([*encoded, *(e.rejected for e in encoded)]):
        answer = (samples[row % 3].meta["chosen"] if row < 3 else samples[row % 3].meta["rejected"])
        targets = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert processor.decode(targets).strip() == answer  # the answer (and its end token) alone is supervised
        prompt = sample.input_ids[:sample.prefix_length]
        assert prompt == encoded[row % 3].input_ids[:encoded[row % 3].prefix_length]  # one prompt per pair
    with pytest.raises(ValueError, match="pairs only"):
        collate([encoded[0], processor.encode_conversation([{"role": "user", "content": "Sky colour?"},
                                                            {"role": "assistant", "content": "blue"}])],
                processor.pad_id)
    with pytest.raises(ValueError, match="data.packing false"):
        pack(encoded, 64, processor.pad_id)


def test_shapes_preferences_reject_a_plausible_wrong_answer():
    from data_pipelines.convert.shapes import make_example, preference_rows

    for index in range(20):
        example = make_example(0, "train", index, 32)
        rows = preference_rows(example, 0, "train", index)
        assert len(rows) == len(example["questions"])
        for row, qa in zip(rows, example["questions"]):
            assert row["chosen"] == qa["answer"] and row["rejected"] != qa["answer"]
            if qa["answer"] in ("yes", "no"):
                assert {row["chosen"], row["rejected"]} == {"yes", "no"}
            if qa["type"] == "count":
                assert abs(int(row["rejected"]) - int(row["chosen"])) == 1
    assert preference_rows(example, 0, "train", 19) == preference_rows(example, 0, "train", 19)  # seeded


def test_the_command_writes_shards_and_says_a_missing_file_in_one_line(shards, tmp_path, capsys):
    from mmllm.cli.main import main

    folder, _ = shards
    root = folder.parent
    assert main(["data", "from-preferences", str(root / "pairs.jsonl"), "--images", str(root / "images"),
                 "--out", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    assert "wrote 3 samples" in said and "chosen equals rejected" in said
    assert main(["data", "from-preferences", str(tmp_path / "nothing.jsonl"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


def test_an_unmarked_image_goes_before_the_first_user_turn_as_in_a_chat():
    from data_pipelines.read.shards import parse_sample

    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is it?"}]
    raw = {"__key__": "k", "png": _png((0, 0, 255)),
           "json": json.dumps({"prompt": prompt, "chosen": "a star", "rejected": "a square"}).encode()}
    sample = parse_sample("preference", raw)
    assert [turn["content"] for turn in sample.conversation] == ["Be brief.", "<image>\nWhat is it?"]
