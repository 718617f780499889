"""Batching: encoded samples -> the batch dict VLM.forward takes, one sample per row (`collate`) or several
packed into each row by first-fit (`pack`), and the two batch streams the training loader draws from.

The stage after the processor and before the model: reader -> processor (encode) -> batching -> module -> model.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Iterable, Iterator, Literal, Sequence

import torch

from data_pipelines.chat.conversation import IGNORE_INDEX
from data_pipelines.processor import EncodedSample

# Batch keys (the contract of docs/formats.md): input_ids, attention_mask, labels, position_ids, prefix_mask
# (B, T); pixel_values (N, 3, S, S) in reading order, only when the batch has an image; image_counts (B,); kinds (B,) each row's
# sample kind ("mlm" for a masked-LM sample, whatever its source's kind); and with packing segment_ids (B, T) plus
# segment_kinds; and, only when the batch holds a masked-LM sample, bidirectional (B, T), True on its tokens; and
# (collate only) groups (B,), each row's group, where the loss weighs groups (data_pipelines.balance); and, for
# preference pairs, pairs: P, the batch's 2P rows being the P chosen answers and then the P rejected ones.
# labels[:, t + 1] is what position t is trained to predict. For a causal sample that is the next token: a sample's
# first token is never a target (nothing before it predicts it), so its label is set to -100, otherwise the
# padding or the previous packed sample would be trained to predict it. For a masked-LM sample it is the hidden
# token at t itself (BERT predicts in place): its labels move one slot to the right, into the slot the causal rule
# leaves free, and its last token is never masked (data_pipelines.masking), so no target leaves its sample. Every
# loss (plain, chunked, weighted, distilled, per kind) then reads one alignment.

def _targets(sample: EncodedSample) -> list[int]:
    if not sample.labels:
        return []
    if sample.objective == "mlm":
        return [IGNORE_INDEX] + list(sample.labels[:-1])
    return [IGNORE_INDEX] + list(sample.labels[1:])


def _loss_kind(sample: EncodedSample) -> str:
    return "mlm" if sample.objective == "mlm" else sample.kind


def _bidirectional(rows: Sequence[Sequence[tuple[int, EncodedSample]]], length: int) -> dict[str, torch.Tensor]:
    """{"bidirectional": (B, T) bool, True on the tokens of masked-LM samples}, or {} when the batch has none.
    rows: each row's (start, sample) pairs."""
    if not any(sample.objective == "mlm" for row in rows for _, sample in row):
        return {}
    bidirectional = torch.zeros((len(rows), length), dtype=torch.bool)
    for row, placed in enumerate(rows):
        for start, sample in placed:
            if sample.objective == "mlm":
                bidirectional[row, start:start + len(sample)] = True
    return {"bidirectional": bidirectional}


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
    pairs = sum(s.rejected is not None for s in samples)
    if pairs:
        if pairs != len(samples):
            raise ValueError("a batch of preference pairs holds pairs only (a preference source is trained alone)")
        # The chosen answers in the first rows, the rejected ones in the same order after them: one forward pass
        # scores both (mmllm.train.preference).
        rows = [*(replace(s, rejected=None) for s in samples), *(s.rejected for s in samples)]
        return {**collate(rows, pad_id, padding_side), "pairs": pairs}
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
    starts = [0 if padding_side == "right" else length - len(s) for s in samples]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "position_ids": position_ids,
        "prefix_mask": prefix_mask,
        **_pixel_values(samples),
        "image_counts": torch.tensor([s.num_images for s in samples], dtype=torch.long),
        "kinds": [_loss_kind(s) for s in samples],
        **({"groups": [s.group for s in samples]} if any(s.group is not None for s in samples) else {}),
        **_bidirectional([[(start, s)] for start, s in zip(starts, samples)], length),
    }


class FirstFit:
    """Greedy first-fit packing: each sample goes into the first row with room for it, else a new row (up to
    max_rows). The one rule by which `pack` lays out rows and the loader's `pack_batches` fills a batch."""

    def __init__(self, max_length: int, max_rows: int | None = None) -> None:
        self.max_length = max_length
        self.max_rows = max_rows
        self.room: list[int] = []  # free tokens left in each row

    def place(self, tokens: int) -> int | None:
        """The row that takes a sample of `tokens` tokens, or None when every row is full and no new one may open."""
        row = next((r for r, free in enumerate(self.room) if free >= tokens), None)
        if row is None:
            if self.max_rows is not None and len(self.room) == self.max_rows:
                return None
            self.room.append(self.max_length)
            row = len(self.room) - 1
        self.room[row] -= tokens
        return row


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Greedy first-fit: sample indices per row, in input order, each row's total length <= max_length."""
    rows: list[list[int]] = []
    first_fit = FirstFit(max_length)
    for index, n in enumerate(lengths):
        if n > max_length:
            raise ValueError(f"sample {index} has {n} tokens, more than the packing length {max_length}")
        row = first_fit.place(n)
        if row == len(rows):
            rows.append([])
        rows[row].append(index)
    return rows


def pack(samples: Sequence[EncodedSample], max_length: int, pad_id: int) -> dict:
    """Several samples per row (greedy first-fit), right padded to the longest row.

    segment_ids number a row's samples 1..k (0 on padding); position_ids restart at 0 in each segment;
    prefix_mask marks each segment's own prompt; pixel_values follow the packed reading order (row by row,
    segment by segment). kinds gives a row's kind, or "mixed"; segment_kinds[b][k - 1] is segment k's kind.
    """
    if any(s.rejected is not None for s in samples):
        raise ValueError("preference pairs are not packed (their two answers must stay in rows of their own): "
                         "set data.packing false")
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
    segment_kinds = [[_loss_kind(samples[i]) for i in row] for row in rows]
    placed = [list(zip(itertools.accumulate((len(samples[i]) for i in row), initial=0), (samples[i] for i in row)))
              for row in rows]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "prefix_mask": prefix_mask,
        **_pixel_values(packed_order),
        "image_counts": torch.tensor([sum(samples[i].num_images for i in row) for row in rows], dtype=torch.long),
        "kinds": [kinds[0] if len(set(kinds)) == 1 else "mixed" for kinds in segment_kinds],
        "segment_kinds": segment_kinds,
        **_bidirectional(placed, length),
    }


# -- the training loader's batch streams --

def batches(items: Iterable[EncodedSample], batch_size: int, pad_id: int) -> Iterator[dict]:
    """Batches of `batch_size` samples, one per row (the last one may be smaller)."""
    items = iter(items)
    while batch := list(itertools.islice(items, batch_size)):
        yield collate(batch, pad_id)


def packed_batches(items: Iterable[EncodedSample], batch_size: int, max_length: int, pad_id: int,
                   num_batches: int) -> Iterator[dict]:
    """Sequence packing: gather samples while first-fit (FirstFit, the rule `pack` lays rows out by)
    keeps them in at most `batch_size` rows of `max_length` tokens, then pack them; `num_batches` batches."""
    items = iter(items)
    pending: list = []  # the sample that did not fit the previous batch
    for _ in range(num_batches):
        group, rows = [], FirstFit(max_length, max_rows=batch_size)
        while True:
            item = pending.pop() if pending else next(items)
            if rows.place(min(len(item), max_length)) is None:
                pending.append(item)
                break
            group.append(item)
        yield pack(group, max_length, pad_id)
