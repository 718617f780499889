"""Collation: padding sides, positions, labels, prefix masks, image order; packing checked against one-at-a-time."""

from __future__ import annotations

import pytest
import torch

from data_pipelines.batching import collate, pack, pack_rows
from data_pipelines.processor import EncodedSample

PAD = 0
IGNORE = -100


def _sample(length: int, first_id: int, images: int = 0, prefix: int = 0, kind: str = "chat") -> EncodedSample:
    ids = list(range(first_id, first_id + length))
    labels = [IGNORE] * prefix + ids[prefix:]
    # Each image is a constant tensor equal to first_id * 10 + its index, so order is visible.
    pixels = torch.stack([torch.full((3, 2, 2), float(first_id * 10 + i)) for i in range(images)]) if images else None
    return EncodedSample(ids, labels, pixels, prefix, kind)


SAMPLES = [_sample(5, 100, images=2, prefix=3), _sample(3, 200, kind="text"), _sample(4, 300, images=1, prefix=2, kind="caption")]


def test_right_padding_puts_tokens_first_and_masks_the_rest():
    batch = collate(SAMPLES, pad_id=PAD)
    assert batch["input_ids"].tolist() == [
        [100, 101, 102, 103, 104], [200, 201, 202, PAD, PAD], [300, 301, 302, 303, PAD]
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 2, 2], [0, 1, 2, 3, 3]]
    assert batch["labels"].tolist() == [
        [IGNORE, IGNORE, IGNORE, 103, 104], [IGNORE, 201, 202, IGNORE, IGNORE], [IGNORE, IGNORE, 302, 303, IGNORE]
    ]
    assert batch["prefix_mask"].tolist() == [[True] * 3 + [False] * 2, [False] * 5, [True] * 2 + [False] * 3]
    assert batch["image_counts"].tolist() == [2, 0, 1]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1000.0, 1001.0, 3000.0]
    assert batch["kinds"] == ["chat", "text", "caption"]
    assert batch["input_ids"].dtype == torch.long and batch["prefix_mask"].dtype == torch.bool


def test_left_padding_right_aligns_tokens_with_positions_from_zero():
    batch = collate(SAMPLES, pad_id=PAD, padding_side="left")
    assert batch["input_ids"].tolist() == [
        [100, 101, 102, 103, 104], [PAD, PAD, 200, 201, 202], [PAD, 300, 301, 302, 303]
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2], [0, 0, 1, 2, 3]]
    # The first real token is never a target: otherwise the padding before it would be trained to predict it.
    assert batch["labels"].tolist() == [
        [IGNORE, IGNORE, IGNORE, 103, 104], [IGNORE, IGNORE, IGNORE, 201, 202], [IGNORE, IGNORE, IGNORE, 302, 303]
    ]
    assert batch["prefix_mask"].tolist() == [[True] * 3 + [False] * 2, [False] * 5, [False, True, True, False, False]]


def test_positions_equal_the_models_default_from_the_attention_mask():
    for side in ("right", "left"):
        batch = collate(SAMPLES, pad_id=PAD, padding_side=side)
        default = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
        assert torch.equal(batch["position_ids"], default)


def test_text_only_batch_has_no_pixel_values():
    batch = collate([SAMPLES[1]], pad_id=PAD)
    assert "pixel_values" not in batch and batch["image_counts"].tolist() == [0]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        collate([], pad_id=PAD)
    with pytest.raises(ValueError, match="padding_side"):
        collate(SAMPLES, pad_id=PAD, padding_side="middle")
    with pytest.raises(ValueError, match="more than the packing length"):
        pack(SAMPLES, max_length=4, pad_id=PAD)


def test_first_fit_fills_earlier_rows_first():
    assert pack_rows([6, 5, 3, 2, 8], max_length=8) == [[0, 3], [1, 2], [4]]


def test_packed_rows_equal_samples_collated_one_at_a_time():
    samples = [_sample(6, 100, images=1, prefix=2), _sample(5, 200, kind="text"), _sample(3, 300, images=2, prefix=1),
               _sample(2, 400, kind="text")]
    batch = pack(samples, max_length=8, pad_id=PAD)  # rows: [0, 3], [1, 2]
    assert batch["segment_ids"].tolist() == [[1] * 6 + [2] * 2, [1] * 5 + [2] * 3]
    rows = [[0, 3], [1, 2]]
    for row, indices in enumerate(rows):
        start = 0
        for index in indices:
            alone = collate([samples[index]], pad_id=PAD)
            n = len(samples[index])
            for key in ("input_ids", "labels", "position_ids", "prefix_mask", "attention_mask"):
                assert torch.equal(batch[key][row, start:start + n], alone[key][0]), key
            start += n
    assert batch["image_counts"].tolist() == [1, 2]
    # Reading order of the packed batch: row 0 (sample 0), then row 1 (sample 1 has none, sample 2 has two).
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1000.0, 3000.0, 3001.0]
    assert batch["kinds"] == ["mixed", "mixed"]
    assert batch["segment_kinds"] == [["chat", "text"], ["text", "chat"]]


def test_packing_pads_the_short_row_with_segment_zero_and_no_targets():
    batch = pack([_sample(4, 100), _sample(3, 200), _sample(2, 300)], max_length=5, pad_id=PAD)
    assert batch["input_ids"].tolist() == [[100, 101, 102, 103, PAD], [200, 201, 202, 300, 301]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 2, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[IGNORE, 101, 102, 103, IGNORE], [IGNORE, 201, 202, IGNORE, 301]]
    assert "pixel_values" not in batch and batch["kinds"] == ["chat", "chat"]
