"""Group balance (`data.balance`): every group of a sample field weighs the same in training.

A sample's group is the value of a field (`sample_group`): a key of the sample's JSON (`group`, say, which
`mmllm data shapes --spurious` writes), `answer` (a chat's answers), or a field of the entries of its `questions`
list (the shapes set's `colour`, `shape`, `type`: the distinct values of its questions, joined by "+"). Samples
without the field form one more group, `(none)`.

Two ways to make the groups weigh the same:
- `resample`: in each source's stream, after the shuffle, `resample_groups` keeps a buffer of recent samples per
  group and yields, for each sample read, one drawn from a group chosen uniformly among the groups seen so far:
  the stream keeps its length, rare groups repeat, common ones are thinned, and the groups come out equally often;
- `reweight`: the stream is left alone and each sample's loss is weighted by the inverse of its group's frequency,
  `1 / (groups x frequency)` (so the weights average 1 over the data), the frequencies counted over the first
  samples of the training sources (`count_groups`) before training starts.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Sequence

NO_GROUP = "(none)"
GROUP_KEY = "__group__"  # where the stream keeps a sample's group in its meta, read before any rewrite
SCAN_SAMPLES = 1000  # samples of each training source read to find the field and count the groups
RESAMPLE_BUFFER = 200  # samples kept per group by `resample_groups`
_NOT_FIELDS = ("url", "references", GROUP_KEY)  # meta keys the reader adds, not the sample's JSON


@dataclass
class Balance:
    """Every group of a sample field weighs the same in training.

    Args:
        by: the field: a key of the sample's JSON (e.g. `group`), `answer`, or a field of its `questions` entries.
        mode: `resample` (groups equally often in the stream) or `reweight` (the loss weighted by inverse group
            frequency).
    """

    by: str
    mode: Literal["resample", "reweight"] = "resample"

    def __post_init__(self) -> None:
        if not isinstance(self.by, str) or not self.by.strip():
            raise ValueError("data.balance.by names a field of the samples, e.g. `group` or `answer`")
        if self.mode not in ("resample", "reweight"):
            raise ValueError(f"data.balance.mode is resample or reweight, got {self.mode!r}")


def sample_group(sample, by: str) -> str | None:
    """The value of field `by` for a parsed sample (see the module docstring), or None when it has none."""
    meta = sample.meta
    if by in meta and by not in _NOT_FIELDS:
        value = meta[by]
        return None if value is None or isinstance(value, (list, dict)) else str(value)
    if by == "answer" and sample.kind == "chat":
        answers = [turn["content"].strip() for turn in sample.conversation or [] if turn["role"] == "assistant"]
        return " | ".join(answers) if answers else None
    entries = meta.get("questions")
    if isinstance(entries, list):
        values = [entry[by] for entry in entries if isinstance(entry, dict) and by in entry]
        values = [str(v) for v in values if v is not None and not isinstance(v, (list, dict))]
        if values:
            return "+".join(sorted(set(values)))
    return None


def label_groups(samples: Iterable, by: str) -> Iterator:
    """Each sample with its group (or NO_GROUP) kept in its meta under GROUP_KEY, read before anything rewrites it."""
    for sample in samples:
        group = sample_group(sample, by)
        sample.meta[GROUP_KEY] = NO_GROUP if group is None else group
        yield sample


def group_label(sample) -> str:
    return sample.meta.get(GROUP_KEY, NO_GROUP)


def resample_groups(samples: Iterable, rng: random.Random, buffer_size: int = RESAMPLE_BUFFER) -> Iterator:
    """For each labelled sample read, one sample of a group drawn uniformly among the groups seen so far, from
    that group's buffer of its `buffer_size` most recent samples (a new one replaces a random old one)."""
    buffers: dict[str, list] = {}
    names: list[str] = []
    for sample in samples:
        group = group_label(sample)
        buffer = buffers.get(group)
        if buffer is None:
            buffer = buffers[group] = []
            names.append(group)
        if len(buffer) < buffer_size:
            buffer.append(sample)
        else:
            buffer[rng.randrange(buffer_size)] = sample
        yield rng.choice(buffers[rng.choice(names)])


def count_groups(read: Sequence[Iterable], by: str, limit: int = SCAN_SAMPLES) -> tuple[Counter, int]:
    """(group -> samples, samples that have the field) over the first `limit` samples of each iterable of parsed
    samples (the training sources)."""
    counts: Counter = Counter()
    found = 0
    for samples in read:
        for sample in itertools.islice(samples, limit):
            group = sample_group(sample, by)
            found += group is not None
            counts[NO_GROUP if group is None else group] += 1
    return counts, found


def inverse_frequency_weights(counts: Counter) -> dict[str, float]:
    """group -> 1 / (groups x its frequency): every group weighs the same, and the weights average 1 over the data."""
    total = sum(counts.values())
    return {group: total / (len(counts) * n) for group, n in counts.items()}


def describe_groups(counts: Counter, weights: dict[str, float] | None = None) -> str:
    """"red circle 41.2% (x0.81), other circle 2.3% (x14.5), (none) 56.5% (x0.59)", most common first."""
    total = sum(counts.values())
    parts = []
    for group, n in counts.most_common():
        parts.append(f"{group} {100 * n / total:.1f}%" + (f" (x{weights[group]:.2f})" if weights else ""))
    return ", ".join(parts)
