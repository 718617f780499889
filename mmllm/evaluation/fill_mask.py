"""`mmllm eval --task fill-mask`: masked-token accuracy of a model trained with the MLM objective (top-1, top-5).

What is hidden, in held-out shards of any kind:
- typed words, where a caption's JSON says what its words are (the shapes data: `objects` with a `colour`,
  `shape`, `size` each): every occurrence of a one-word value in the caption is masked alone, one item per word, and
  scored per class (the field's name). The caption is encoded as MLM training encodes it (Processor.encode_masked:
  the image, the caption instruction, the caption), so `--blind` (a blank image) measures how much the image tells;
- otherwise `rate` of the tokens MLM training would mask (data_pipelines.masking.mask_candidates), every one of them
  replaced by `<mask>` (no 80/10/10 at test time), chosen by an RNG seeded from the sample's index: the same positions
  for every model and every run.
Every hidden token is scored at its own position; special tokens are never among the predictions.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from typing import Any

from data_pipelines.chat.conversation import NoSupervisedTokens
from data_pipelines.chat.special_tokens import MASK
from data_pipelines.masking import DEFAULT_RATE, mask_candidates
from data_pipelines.processor import EncodedSample

TOP_K = 5


@dataclass
class MaskItem:
    """One model input with hidden tokens: the encoded sample, where its masks are, what they hide, and the class
    of the hidden word (None for untyped masking)."""

    key: str
    encoded: EncodedSample
    positions: list[int]
    targets: list[int]
    word_class: str | None = None
    word: str | None = None


@dataclass
class FillMaskScores:
    """Hits at 1 and at 5 per hidden token, overall and per word class."""

    top1: int = 0
    top5: int = 0
    count: int = 0
    by_class: dict[str, list[int]] = field(default_factory=dict)  # class -> [top1, top5, count]
    left_out: int = 0  # typed words not masked (masking them would change the caption's other tokens)

    def add(self, word_class: str | None, hit1: bool, hit5: bool) -> None:
        self.top1, self.top5, self.count = self.top1 + hit1, self.top5 + hit5, self.count + 1
        if word_class is not None:
            totals = self.by_class.setdefault(word_class, [0, 0, 0])
            totals[0], totals[1], totals[2] = totals[0] + hit1, totals[1] + hit5, totals[2] + 1

    def to_dict(self) -> dict:
        report = {"top1": self.top1 / max(1, self.count), "top5": self.top5 / max(1, self.count), "count": self.count}
        if self.by_class:
            report["top1_per_class"] = {c: t[0] / t[2] for c, t in sorted(self.by_class.items())}
            report["top5_per_class"] = {c: t[1] / t[2] for c, t in sorted(self.by_class.items())}
            report["count_per_class"] = {c: t[2] for c, t in sorted(self.by_class.items())}
            report["typed_words_left_out"] = self.left_out
        return report


def word_classes(meta: dict[str, Any]) -> dict[str, str]:
    """word -> class from a sample JSON's `objects` (one-word string fields: {"colour": "red"} makes red a colour)."""
    classes = {}
    for obj in meta.get("objects") or []:
        if isinstance(obj, dict):
            for name, value in obj.items():
                if isinstance(value, str) and re.fullmatch(r"[A-Za-z]+", value):
                    classes[value] = name
    return classes


def typed_items(processor, key: str, caption: str, image, classes: dict[str, str]) -> tuple[list[MaskItem], int]:
    """One item per occurrence of a typed word in the caption, its tokens masked; and how many words were left out
    because masking them would change how the rest of the caption is tokenized."""
    items, skipped = [], 0
    encode_text = processor.template.encode_text
    whole = encode_text(caption)
    for match in re.finditer(r"[A-Za-z]+", caption):
        word_class = classes.get(match.group())
        if word_class is None:
            continue
        before, after = caption[:match.start()], caption[match.end():]
        targets = encode_text((" " if before.endswith(" ") else "") + match.group())
        if encode_text(before.rstrip(" ")) + targets + encode_text(after) != whole:
            skipped += 1
            continue
        encoded, positions = processor.encode_masked(before + MASK * len(targets) + after, image)
        items.append(MaskItem(key, encoded, positions, targets, word_class, match.group()))
    return items, skipped


def sampled_items(processor, key: str, encoded: EncodedSample, seed: str, rate: float) -> list[MaskItem]:
    """`rate` of the sample's maskable tokens (at least one) replaced by `<mask>`, chosen by an RNG seeded by `seed`."""
    candidates = mask_candidates(encoded, processor.special_token_ids)
    if not candidates:
        return []
    rng = random.Random(seed)
    positions = [i for i in candidates if rng.random() < rate] or [rng.choice(candidates)]
    input_ids = list(encoded.input_ids)
    targets = [input_ids[i] for i in positions]
    for position in positions:
        input_ids[position] = processor.mask_id
    masked = replace(encoded, input_ids=input_ids, labels=[-100] * len(input_ids), objective="mlm")
    return [MaskItem(key, masked, positions, targets)]


def mask_items(processor, samples, blank=None, rate: float = DEFAULT_RATE) -> tuple[list[MaskItem], int]:
    """The items of held-out samples (shards.Sample, decoded), with every image blank when `blank` is given; and the
    typed words left out (see typed_items)."""
    items, skipped = [], 0
    for index, sample in enumerate(samples):
        images = [blank] * len(sample.images) if blank is not None else list(sample.images)
        classes = word_classes(sample.meta) if sample.kind == "caption" else {}
        caption = (sample.conversation or [{}, {}])[-1].get("content", "") if sample.kind == "caption" else ""
        if classes and caption:
            found, left_out = typed_items(processor, sample.key, caption, images[0], classes)
            items += found
            skipped += left_out
            continue
        try:
            pieces = (processor.encode_text_chunks(sample.text) if sample.kind == "text"
                      else [processor.encode_sample(replace(sample, images=images))])
        except NoSupervisedTokens:
            continue
        for part, piece in enumerate(pieces):
            items += sampled_items(processor, sample.key, piece, f"{index}:{part}", rate)
    return items, skipped


def score_items(vlm, items: list[MaskItem], batch_size: int, progress=None) -> tuple[FillMaskScores, list[dict]]:
    """Top-1 / top-5 hits of every hidden token, and a record per item (its targets and top-5 predictions)."""
    predictions = vlm.mask_predictions([item.encoded for item in items], [item.positions for item in items], TOP_K,
                                       batch_size=batch_size, progress=progress)
    scores, records = FillMaskScores(), []
    for item, (_, top) in zip(items, predictions):
        top = top.tolist()
        for target, ranked in zip(item.targets, top):
            scores.add(item.word_class, ranked[0] == target, target in ranked)
        records.append({"key": item.key, "word_class": item.word_class, "word": item.word, "targets": item.targets,
                        "top5": top})
    return scores, records
