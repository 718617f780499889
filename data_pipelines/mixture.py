"""A weighted mixture of shard sources as one stream of batches, and the DataLoader that serves it.

Sources are `{kind, path, weight, single_turn}` (path: a folder of shards, a brace pattern, a `.tar` or a
list; single_turn: see pipeline.single_turn). In each slot (rank x dataloader worker) every source is an endless stream (pipeline.source_stream: shards cycle
pass after pass, or are resampled); each sample is drawn from source i with probability
weight_i / sum(weights), by an RNG seeded from (seed, epoch, slot), so runs repeat exactly.

Epoch length: as many samples as all sources hold together (sizes.json), split equally over slots
(`ceil(total / slots)` per slot), whatever the weights. Weights set the proportions, so a source with a
high weight for its size repeats within an epoch, and one with a low weight is only partly seen; a
single source with even shards is read exactly once per epoch. Every slot yields the same number of
batches, so DDP ranks never wait on each other; the loader's `len()` is the batches per rank.
With packing, an epoch has as many batches (steps) as without, each holding more samples.

Epochs: `MixtureLoader` passes its epoch number to the dataset before each pass (new shard order and
shuffle each epoch); call `loader.set_epoch(n)` when resuming. Workers are not persistent, so each epoch's
workers start from the dataset as the loader last set it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset

from data_pipelines.bad_samples import BadSampleHandler
from data_pipelines.collate import collate, pack
from data_pipelines.formats import KINDS
from data_pipelines.images import DEFAULT_MAX_PIXELS
from data_pipelines.pipeline import (
    DEFAULT_SHUFFLE_BUFFER,
    Slot,
    StreamOptions,
    batch_samples,
    current_slot,
    distributed_rank_and_world_size,
    pack_batches,
    samples_per_slot,
    slot_rng,
    source_stream,
)
from data_pipelines.processor import Processor
from data_pipelines.shard_lists import ShardSet, load_shard_set


@dataclass(frozen=True)
class Source:
    """One stream of the mixture: a kind of shard, where its shards are, its weight, and for chats the probability
    of presenting a multi-turn conversation as one of its questions asked alone (pipeline.single_turn)."""

    kind: str
    path: str | list[str]
    weight: float = 1.0
    single_turn: float = 0.0

    @classmethod
    def of(cls, spec: "Source | dict[str, Any]") -> "Source":
        """A Source from a config entry `{kind, path, weight, single_turn}` (weight 1 and single_turn 0 unless given)."""
        if isinstance(spec, Source):
            source = spec
        else:
            unknown = set(spec) - {"kind", "path", "weight", "single_turn"}
            if unknown or "kind" not in spec or "path" not in spec:
                raise ValueError(f"a source is {{kind, path, weight, single_turn}}; got {dict(spec)}")
            source = cls(spec["kind"], spec["path"], float(spec.get("weight", 1.0)),
                         float(spec.get("single_turn", 0.0)))
        if source.kind not in KINDS:
            raise ValueError(f"source kind {source.kind!r} is not one of {', '.join(KINDS)}")
        if not source.weight >= 0 or math.isinf(source.weight):
            raise ValueError(f"source weight must be a finite number >= 0, got {source.weight}")
        if not 0 <= source.single_turn <= 1 or (source.single_turn and source.kind != "chat"):
            raise ValueError(f"single_turn is a probability for chat sources; got {source.single_turn} for "
                             f"{source.kind}")
        return source


def source_names(sources: Sequence[Source]) -> list[str]:
    """Each source's name in per-source counts: its kind, or kind[i] when several sources share a kind."""
    kinds = Counter(source.kind for source in sources)
    return [s.kind if kinds[s.kind] == 1 else f"{s.kind}[{i}]" for i, s in enumerate(sources)]


class MixtureDataset(IterableDataset):
    """The weighted mixture of `sources` for one rank: batches (with a batch size) or samples (without).

    With `processor=None` it yields decoded `formats.Sample`s (no tokenizing), for tools and tests.
    `delivered` counts the samples this process yielded per source name (see `source_names`).
    """

    def __init__(
        self,
        sources: Sequence[Source | dict[str, Any]],
        processor: Processor | None = None,
        batch_size: int | None = None,
        *,
        num_workers: int = 0,
        seed: int = 0,
        resampled: bool = False,
        shuffle: bool = True,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        packing: bool = False,
        max_length: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.sources = [Source.of(spec) for spec in sources]
        self.sources = [source for source in self.sources if source.weight > 0]
        if not self.sources:
            raise ValueError("a mixture needs at least one source with a weight above 0")
        if batch_size is not None and (batch_size < 1 or processor is None):
            raise ValueError("batching needs a processor and a batch size >= 1")
        if packing and (batch_size is None or not max_length):
            raise ValueError("packing needs a batch size and max_length (tokens per packed row)")
        if rank is None or world_size is None:
            rank, world_size = distributed_rank_and_world_size()
        self.names = source_names(self.sources)
        self.shard_sets: list[ShardSet] = [load_shard_set(source.path) for source in self.sources]
        for name, shard_set in zip(self.names, self.shard_sets):
            if shard_set.num_samples == 0:
                raise ValueError(f"source {name} ({shard_set.shards[0]}, ...) holds no samples")
        self.processor = processor
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.resampled = resampled
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.packing = packing
        self.max_length = max_length
        self.epoch = 0
        self.delivered: Counter = Counter()
        self.handler = BadSampleHandler()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        """Samples in all sources together (from sizes.json): one epoch of the whole job."""
        return sum(shard_set.num_samples for shard_set in self.shard_sets)

    @property
    def slots_per_rank(self) -> int:
        return max(1, self.num_workers)

    def samples_per_slot(self, slots: int | None = None) -> int:
        return samples_per_slot(self.num_samples, slots or self.world_size * self.slots_per_rank)

    def batches_per_slot(self, slots: int | None = None) -> int:
        return math.ceil(self.samples_per_slot(slots) / self.batch_size)

    def __len__(self) -> int:
        """Batches (or samples, without a batch size) this rank yields per epoch, over all its workers."""
        if self.batch_size is None:
            return self.slots_per_rank * self.samples_per_slot()
        return self.slots_per_rank * self.batches_per_slot()

    def mixed_samples(self, slot: Slot) -> Iterator:
        """The endless weighted mixture for one slot; counts each delivered sample in `delivered`."""
        max_pixels = self.processor.max_pixels if self.processor is not None else DEFAULT_MAX_PIXELS
        options = StreamOptions(seed=self.seed, epoch=self.epoch, resampled=self.resampled, shuffle=self.shuffle,
                                shuffle_buffer=self.shuffle_buffer, max_pixels=max_pixels)
        streams = [source_stream(shard_set, source.kind, slot, options, self.handler, self.processor,
                                 source.single_turn)
                   for source, shard_set in zip(self.sources, self.shard_sets)]
        cumulative = list(itertools.accumulate(source.weight for source in self.sources))
        rng = slot_rng(self.seed, self.epoch, slot, "source choice")
        while True:
            index = min(bisect.bisect_right(cumulative, rng.random() * cumulative[-1]), len(streams) - 1)
            item = next(streams[index])
            self.delivered[self.names[index]] += 1
            yield item

    def __iter__(self) -> Iterator:
        slot = current_slot(self.rank, self.world_size)
        samples = self.mixed_samples(slot)
        if self.batch_size is None:
            return itertools.islice(samples, self.samples_per_slot(slot.count))
        if self.packing:
            pack_fn = partial(pack, max_length=self.max_length, pad_id=self.processor.pad_id)
            return pack_batches(samples, self.batch_size, self.max_length, pack_fn,
                                self.batches_per_slot(slot.count), self.handler)
        collate_fn = partial(collate, pad_id=self.processor.pad_id, padding_side="right")
        epoch_samples = itertools.islice(samples, self.samples_per_slot(slot.count))
        return batch_samples(epoch_samples, self.batch_size, collate_fn, self.handler)


class MixtureLoader(DataLoader):
    """A DataLoader over a MixtureDataset that starts each pass at the next epoch (new shard order, shuffle)."""

    def __init__(self, dataset: MixtureDataset, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._next_epoch = dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass (call when resuming from a checkpoint)."""
        self._next_epoch = epoch

    def __iter__(self):
        self.dataset.set_epoch(self._next_epoch)
        self._next_epoch += 1
        return super().__iter__()


def make_loader(
    sources: Sequence[Source | dict[str, Any]],
    processor: Processor,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    resampled: bool = False,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    packing: bool = False,
    max_length: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    shuffle: bool = True,
    pin_memory: bool = False,
) -> MixtureLoader:
    """A DataLoader of training batches from a weighted mixture of sources, for this rank (see module doc).

    rank / world_size default to torch.distributed's when it is initialised, else 0 / 1. Each batch is the
    collate (or pack) batch dict plus `skipped` (see bad_samples.BadSampleCounter). `len(loader)` is the
    batches per epoch on this rank, the same on every rank.
    """
    dataset = MixtureDataset(sources, processor, batch_size, num_workers=num_workers, seed=seed,
                             resampled=resampled, shuffle=shuffle, shuffle_buffer=shuffle_buffer, packing=packing,
                             max_length=max_length, rank=rank, world_size=world_size)
    return MixtureLoader(dataset, num_workers=num_workers, pin_memory=pin_memory and torch.cuda.is_available(),
                         persistent_workers=False)
