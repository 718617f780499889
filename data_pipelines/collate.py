"""Batching: EncodedSamples -> the batch dict VLM.forward takes, one sample per row (`collate`) or packed (`pack`).

Batch keys (the contract): input_ids, attention_mask, labels, position_ids, prefix_mask (B, T);
pixel_values (N, 3, S, S) in reading order, only when the batch has an image; image_counts (B,); sources;
and with packing segment_ids (B, T) plus segment_sources. A sample's first token is never a target (nothing
before it predicts it), so its label is set to -100: otherwise the padding or the previous packed sample
would be trained to predict it.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from data_pipelines.chat import IGNORE_INDEX
from data_pipelines.processor import EncodedSample


def _targets(sample: EncodedSample) -> list[int]:
    return [IGNORE_INDEX] + list(sample.labels[1:]) if sample.labels else []


def _pixel_values(samples: Sequence[EncodedSample]) -> dict[str, torch.Tensor]:
    images = [s.pixel_values for s in samples if s.pixel_values is not None and s.pixel_values.shape[0]]
    return {"pixel_values": torch.cat(images)} if images else {}


def collate(
    samples: Sequence[EncodedSample], pad_id: int, padding_side: Literal["right", "left"] = "right"
) -> dict:
    """One sample per row, padded to the longest: right padding for training, left for generation."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    batch_size, length = len(samples), max(len(s) for s in samples)
    input_ids = torch.full((batch_size, length), pad_id, dtype=torch.long)
    labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    prefix_mask = torch.zeros((batch_size, length), dtype=torch.bool)
    for row, sample in enumerate(samples):
        n = len(sample)
        start = 0 if padding_side == "right" else length - n
        input_ids[row, start:start + n] = torch.tensor(sample.input_ids, dtype=torch.long)
        labels[row, start:start + n] = torch.tensor(_targets(sample), dtype=torch.long)
        attention_mask[row, start:start + n] = 1
        prefix_mask[row, start:start + sample.prefix_length] = True
    # The model's default positions: 0.. on real tokens whichever side the padding is on.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "position_ids": position_ids,
        "prefix_mask": prefix_mask,
        **_pixel_values(samples),
        "image_counts": torch.tensor([s.num_images for s in samples], dtype=torch.long),
        "sources": [s.kind for s in samples],
    }


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Greedy first-fit: sample indices per row, in input order, each row's total length <= max_length."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index, n in enumerate(lengths):
        if n > max_length:
            raise ValueError(f"sample {index} has {n} tokens, more than the packing length {max_length}")
        row = next((r for r, free in enumerate(room) if free >= n), None)
        if row is None:
            rows.append([])
            room.append(max_length)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= n
    return rows


def pack(samples: Sequence[EncodedSample], max_length: int, pad_id: int) -> dict:
    """Several samples per row (greedy first-fit), right padded to the longest row.

    segment_ids number a row's samples 1..k (0 on padding); position_ids restart at 0 in each segment;
    prefix_mask marks each segment's own prompt; pixel_values follow the packed reading order (row by row,
    segment by segment). sources gives a row's kind, or "mixed"; segment_sources[b][k - 1] is segment k's kind.
    """
    if not samples:
        raise ValueError("cannot pack an empty list of samples")
    rows = pack_rows([len(s) for s in samples], max_length)
    batch_size = len(rows)
    length = max(sum(len(samples[i]) for i in row) for row in rows)
    input_ids = torch.full((batch_size, length), pad_id, dtype=torch.long)
    labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    position_ids = torch.zeros((batch_size, length), dtype=torch.long)
    segment_ids = torch.zeros((batch_size, length), dtype=torch.long)
    prefix_mask = torch.zeros((batch_size, length), dtype=torch.bool)
    for row, indices in enumerate(rows):
        start = 0
        for segment, index in enumerate(indices, start=1):
            sample = samples[index]
            n = len(sample)
            input_ids[row, start:start + n] = torch.tensor(sample.input_ids, dtype=torch.long)
            labels[row, start:start + n] = torch.tensor(_targets(sample), dtype=torch.long)
            attention_mask[row, start:start + n] = 1
            position_ids[row, start:start + n] = torch.arange(n)
            segment_ids[row, start:start + n] = segment
            prefix_mask[row, start:start + sample.prefix_length] = True
            start += n
    packed_order = [samples[i] for row in rows for i in row]
    segment_sources = [[samples[i].kind for i in row] for row in rows]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "prefix_mask": prefix_mask,
        **_pixel_values(packed_order),
        "image_counts": torch.tensor([sum(samples[i].num_images for i in row) for row in rows], dtype=torch.long),
        "sources": [kinds[0] if len(set(kinds)) == 1 else "mixed" for kinds in segment_sources],
        "segment_sources": segment_sources,
    }
