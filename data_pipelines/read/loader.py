"""Training batches from a weighted mixture of shard sources: the stages between shards and the model's batch.

    shard list -> shuffle shards -> split by node -> split by worker -> tar to samples (shards.py) -> shuffle
    (compressed bytes) -> parse -> [group, resample groups (balance.py), counterfactual (counterfactual.py)]
    -> decode images -> encode (processor.py) -> mix sources -> batch (collate or pack)

Every stage runs inside one dataloader worker of one rank (a "slot"); rank and world size are explicit
arguments, never read from the environment here. Failures at any stage go to the one `BadSampleHandler`.

Sources are `{kind, path, weight, single_turn, objective}` (path: see shards.py; single_turn: see `single_turn`;
objective: `causal`, or `mlm`, masked by data_pipelines.masking with the stream's RNG). In each
slot every source is an endless stream: shards cycle pass after pass, or are resampled. Each sample is drawn from
source i with probability weight_i / sum(weights), by an RNG seeded from (seed, epoch, slot), so runs repeat
exactly.

Epochs and DDP safety. Each pass over a source shuffles its shard list with a seed shared by all ranks, then
deals shards round-robin to ranks and, within a rank, to workers, so one pass reads every shard exactly once
across all slots. When a source has fewer shards than slots, every slot reads all of them and keeps every
`slots`-th sample instead. An epoch is as many samples as all sources hold together (sizes.json), split
equally over slots (`ceil(total / slots)` each), whatever the weights: weights set the proportions, so a source
with a high weight for its size repeats within an epoch, and one with a low weight is only partly seen; a
single source with even shards is read exactly once per epoch. Every slot yields the same number of batches,
so DDP ranks never wait on each other, and the loader's `len()` is the batches per rank. With packing, an
epoch has as many batches (steps) as without, each holding more samples.

Resampled mode (multi-node pretraining, open_clip's `--dataset-resampled`): each slot draws shards with
replacement from its own seeded RNG, forever; an epoch is the same number of samples as above.

`MixtureLoader` passes its epoch number to the dataset before each pass (new shard order and shuffle each
epoch); call `loader.set_epoch(n)` when resuming. Workers are not persistent, so each epoch's workers start
from the dataset as the loader last set it.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset

from data_pipelines.balance import GROUP_KEY, Balance, label_groups, resample_groups
from data_pipelines.batching import batches, packed_batches
from data_pipelines.video import VideoOptions
from data_pipelines.chat.special_tokens import IMAGE_MARKER
from data_pipelines.chat.tokenizer import vocab_size
from data_pipelines.images import DEFAULT_MAX_PIXELS
from data_pipelines.masking import DEFAULT_RATE, check_rate, mask_sample
from data_pipelines.processor import EncodedSample, Processor
from data_pipelines.read.bad_samples import SKIPPED_KEY, BadSampleHandler
from data_pipelines.read.shards import (
    KINDS,
    Sample,
    ShardSet,
    decode_samples,
    load_shard_set,
    parse_samples,
    sample_name,
    skip_bad,
    tar_samples,
)

DEFAULT_SHUFFLE_BUFFER = 1000  # samples (compressed) held by the shuffle stage


@dataclass(frozen=True)
class Slot:
    """Where a stream runs: rank `rank` of `world_size`, dataloader worker `worker` of `num_workers`."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


def distributed_rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when it is initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def current_slot(rank: int, world_size: int) -> Slot:
    """The slot of the calling process: this rank, and the dataloader worker it runs in (if any)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    info = torch.utils.data.get_worker_info()
    if info is None:
        return Slot(rank, world_size, 0, 1)
    return Slot(rank, world_size, info.id, info.num_workers)


def slot_rng(seed: int, epoch: int, slot: Slot | None, purpose: str, pass_index: int = 0) -> random.Random:
    """A seeded RNG; `slot=None` gives one shared by every rank and worker (for shard order)."""
    where = "all" if slot is None else f"{slot.index}/{slot.count}"
    return random.Random(f"{seed}:{epoch}:{pass_index}:{where}:{purpose}")


def samples_per_slot(total_samples: int, slots: int) -> int:
    """Samples each slot yields per epoch: the equal share of the whole, rounded up."""
    return math.ceil(total_samples / slots)


@dataclass(frozen=True)
class StreamOptions:
    """How the mixture is read: the one spelling of the loader options (the data module fills it from its
    config). packing puts several samples in each row of max_length tokens."""

    seed: int = 0
    resampled: bool = False
    shuffle: bool = True  # shard order and sample shuffle buffer; False reads shards in order
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    packing: bool = False
    max_length: int | None = None  # tokens per packed row
    mlm_rate: float = DEFAULT_RATE  # fraction of text tokens masked in sources with objective mlm
    balance: Balance | None = None  # groups of a sample field resampled to equal shares (data_pipelines.balance)
    group_by: str | None = None  # each encoded sample carries its group of this field (reweighting, group DRO)
    # words swapped, scenes redrawn: a data_pipelines.counterfactual.Counterfactual, whose `rewrite_samples` is the
    # stage (not imported here: it draws scenes with data_pipelines.convert, which reads shards with this room)
    counterfactual: Any = None


# -- stages: shard list -> shard order -> split by node -> split by worker --

def shuffle_shards(shards: list[str], rng: random.Random | None) -> list[str]:
    """A new shard order (the same on every rank when the RNG is seeded the same); None keeps the order."""
    shards = list(shards)
    if rng is not None:
        rng.shuffle(shards)
    return shards


def split_by_node(items: list, slot: Slot) -> list:
    """This rank's share: items rank, rank + world_size, ..."""
    return items[slot.rank::slot.world_size]


def split_by_worker(items: list, slot: Slot) -> list:
    """This worker's share of its rank's items."""
    return items[slot.worker::slot.num_workers]


def resampled_shards(shards: list[str], rng: random.Random, count: int) -> list[str]:
    """`count` shards drawn with replacement (webdataset's ResampledShards, with a per-slot seed)."""
    return [rng.choice(shards) for _ in range(count)]


# -- stages between tar and batch: thin the slot's share, shuffle, single-turn chats, encode --

def keep_every(items: Iterable, start: int, step: int) -> Iterator:
    """Items start, start + step, ...: splits samples between slots when there are fewer shards than slots."""
    return itertools.islice(items, start, None, step)


# -- stage: shuffle compressed samples --

def shuffle_samples(items: Iterable, buffer_size: int, rng: random.Random) -> Iterator:
    """Yield items in random order using a buffer of `buffer_size` (0 or 1: no shuffling); drains at the end."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        buffer[index], item = item, buffer[index]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def single_turn(sample: Sample, rng: random.Random) -> Sample:
    """One user -> assistant pair of a multi-turn chat, asked as the first turn after the image (its image
    marker moved to it; a leading system turn kept). Chats of one question or of several images stay as they are.

    A model trained only on whole conversations never sees its later questions asked first; mixing in some of
    these teaches it to answer them alone too (data.sources' `single_turn` probability).
    """
    turns = sample.conversation or []
    pairs = [i for i in range(len(turns) - 1) if turns[i]["role"] == "user" and turns[i + 1]["role"] == "assistant"]
    if len(pairs) < 2 or len(sample.images) > 1:
        return sample
    index = rng.choice(pairs)
    question = turns[index]["content"].replace(IMAGE_MARKER, "").strip()
    marker = IMAGE_MARKER + "\n" if sample.images else ""
    system = [dict(turns[0])] if turns[0]["role"] == "system" else []
    return replace(sample, conversation=[*system, {"role": "user", "content": marker + question},
                                         dict(turns[index + 1])])


def single_turn_samples(samples: Iterable[Sample], probability: float, rng: random.Random) -> Iterator[Sample]:
    """Each chat replaced by `single_turn` of it with the given probability."""
    for sample in samples:
        yield single_turn(sample, rng) if rng.random() < probability else sample


def encode_samples(samples: Iterable[Sample], processor: Processor, handler: BadSampleHandler,
                   masker: Callable[[EncodedSample], EncodedSample] | None = None) -> Iterator[EncodedSample]:
    """Decoded `Sample`s -> `EncodedSample`s (token ids, labels, pixel tensors) by the one Processor.

    A text document longer than the processor's max_length becomes several consecutive pieces rather than
    being cut short, so no text is thrown away; captions and chats give one encoded sample each. `masker` (the MLM
    objective) rewrites each encoded piece.
    """
    def encode(sample: Sample) -> list[EncodedSample]:
        pieces = encode_pieces(sample, processor)
        return pieces if masker is None else [masker(piece) for piece in pieces]

    for pieces in skip_bad(samples, encode, handler, sample_name):
        yield from pieces


def mlm_masker(processor: Processor, rate: float, rng: random.Random) -> Callable[[EncodedSample], EncodedSample]:
    """The masking stage of an MLM source (data_pipelines.masking), drawing from the stream's RNG."""
    mask_id = processor.mask_id
    if mask_id is None:
        raise ValueError("an MLM source needs a tokenizer with a <mask> token (add_mask_token)")
    size, special = vocab_size(processor.tokenizer), processor.special_token_ids
    return lambda sample: mask_sample(sample, rate, mask_id, size, special, rng)


def encode_pieces(sample: Sample, processor: Processor) -> list[EncodedSample]:
    pieces = processor.encode_text_chunks(sample.text) if sample.kind == "text" else [processor.encode_sample(sample)]
    group = sample.meta.get(GROUP_KEY)  # labelled by label_groups when the loss or the resampling needs it
    if group is not None:
        for piece in pieces:
            piece.group = group
    return pieces


# -- one source in one slot: the stages chained, pass after pass --

def pass_shards(source: ShardSet, slot: Slot, options: StreamOptions, epoch: int,
                pass_index: int) -> tuple[list[str], int, int]:
    """(shards this slot reads in this pass, start, step): the slot keeps samples start, start + step, ...

    Non-resampled: shuffle (shared seed) -> split by node -> split by worker; with fewer shards than slots,
    every slot reads every shard and keeps every `slots`-th sample. Resampled: len(source) random shards.
    """
    shards = list(source.shards)
    if options.resampled:
        rng = slot_rng(options.seed, epoch, slot, "resampled shards", pass_index)
        return resampled_shards(shards, rng, len(shards)), 0, 1
    order_rng = slot_rng(options.seed, epoch, None, "shard order", pass_index) if options.shuffle else None
    order = shuffle_shards(shards, order_rng)
    if len(order) >= slot.count:
        return split_by_worker(split_by_node(order, slot), slot), 0, 1
    step = max(1, min(slot.count, source.num_samples))  # fewer samples than slots: slots share samples
    return order, slot.index % step, step


def source_pass(source: ShardSet, kind: str, slot: Slot, options: StreamOptions, epoch: int, pass_index: int,
                handler: BadSampleHandler, processor: Processor | None = None, single_turn: float = 0.0,
                max_pixels: int | None = DEFAULT_MAX_PIXELS, objective: str = "causal") -> Iterator:
    """One pass of one source in one slot, through every stage up to encoding (decoding only without a
    processor), and masking for objective `mlm`; chats become single-turn with probability `single_turn`."""
    shards, start, step = pass_shards(source, slot, options, epoch, pass_index)
    raws = keep_every(tar_samples(shards, handler), start, step)
    buffer = options.shuffle_buffer if options.shuffle else 0
    raws = shuffle_samples(raws, buffer, slot_rng(options.seed, epoch, slot, "sample shuffle", pass_index))
    samples = parse_samples(raws, kind, handler)
    if single_turn > 0 and kind == "chat":
        samples = single_turn_samples(samples, single_turn,
                                      slot_rng(options.seed, epoch, slot, "single turn", pass_index))
    by = options.group_by or (options.balance.by if options.balance is not None else None)
    if by is not None:
        samples = label_groups(samples, by)
    if options.balance is not None and options.balance.mode == "resample":
        samples = resample_groups(samples, slot_rng(options.seed, epoch, slot, "balance", pass_index))
    if options.counterfactual is not None:
        samples = options.counterfactual.rewrite_samples(
            samples, slot_rng(options.seed, epoch, slot, "counterfactual", pass_index))
    samples = decode_samples(samples, handler, max_pixels, processor.video if processor is not None else VideoOptions())
    if processor is None:
        return samples
    masker = (mlm_masker(processor, options.mlm_rate, slot_rng(options.seed, epoch, slot, "mlm mask", pass_index))
              if objective == "mlm" else None)
    return encode_samples(samples, processor, handler, masker)


def source_stream(source: ShardSet, kind: str, slot: Slot, options: StreamOptions, epoch: int,
                  handler: BadSampleHandler, processor: Processor | None = None, single_turn: float = 0.0,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS, objective: str = "causal") -> Iterator:
    """An endless stream of one source's samples for one slot: pass after pass, a new shard order each time.

    Raises RuntimeError when a whole pass yields no usable sample (every sample bad), instead of spinning.
    """
    for pass_index in itertools.count():
        usable = 0
        for item in source_pass(source, kind, slot, options, epoch, pass_index, handler, processor, single_turn,
                                max_pixels, objective):
            usable += 1
            yield item
        if usable == 0:
            raise RuntimeError(
                f"no usable {kind} sample in a whole pass over {len(source)} shards (first {source.shards[0]}); "
                f"skipped so far: {dict(handler.counts)}")


# -- stage: batch --

def batch_samples(items: Iterable[EncodedSample], batch_size: int, pad_id: int,
                  handler: BadSampleHandler) -> Iterator[dict]:
    """batching.batches, each carrying the skipped-sample counts of this worker since its previous batch as
    `batch["skipped"]` ({reason: samples})."""
    return (_with_skipped(batch, handler) for batch in batches(items, batch_size, pad_id))


def pack_batches(items: Iterable[EncodedSample], batch_size: int, max_length: int, pad_id: int, num_batches: int,
                 handler: BadSampleHandler) -> Iterator[dict]:
    """batching.packed_batches, with the skipped-sample counts as in batch_samples."""
    return (_with_skipped(batch, handler)
            for batch in packed_batches(items, batch_size, max_length, pad_id, num_batches))


def _with_skipped(batch: dict, handler: BadSampleHandler) -> dict:
    # a plain dict: torch's default_convert copies a Counter with Counter.update, which would double it
    batch[SKIPPED_KEY] = dict(handler.take_unreported())
    return batch


# -- the mixture of sources, for one rank --

@dataclass(frozen=True)
class Source:
    """One stream of the mixture: a kind of shard, where its shards are, its weight, for chats the probability
    of presenting a multi-turn conversation as one of its questions asked alone (pipeline.single_turn), and its
    training objective (`causal`, or `mlm`: masked language modelling, data_pipelines.masking)."""

    kind: str
    path: str | list[str]
    weight: float = 1.0
    single_turn: float = 0.0
    objective: str = "causal"

    @classmethod
    def of(cls, spec: "Source | dict[str, Any]") -> "Source":
        """A Source from a config entry `{kind, path, weight, single_turn, objective}` (weight 1, single_turn 0 and
        objective causal unless given); ValueError saying what is wrong with any other value."""
        if isinstance(spec, Source):
            source = spec
        else:
            if not isinstance(spec, dict) or set(spec) - {"kind", "path", "weight", "single_turn", "objective"} \
                    or "kind" not in spec or "path" not in spec:
                raise ValueError(f"a source is {{kind, path, weight, single_turn, objective}}; got {spec!r}")
            source = cls(spec["kind"], spec["path"], _number(spec, "weight", 1.0), _number(spec, "single_turn", 0.0),
                         spec.get("objective", "causal"))
        if not isinstance(source.kind, str) or source.kind not in KINDS:
            raise ValueError(f"source kind {source.kind!r} is not one of {', '.join(KINDS)}")
        paths = source.path if isinstance(source.path, list) else [source.path]
        if not paths or not all(isinstance(path, str) and path for path in paths):
            raise ValueError(f"source path must be a folder, pattern or .tar file (or a list of them), got "
                             f"{source.path!r}")
        if not source.weight >= 0 or math.isinf(source.weight):
            raise ValueError(f"source weight must be a finite number >= 0, got {source.weight}")
        if not 0 <= source.single_turn <= 1 or (source.single_turn and source.kind != "chat"):
            raise ValueError(f"single_turn is a probability for chat sources; got {source.single_turn} for "
                             f"{source.kind}")
        objectives = OBJECTIVES[source.kind]
        if source.objective not in objectives:
            raise ValueError(f"source objective {source.objective!r} is not one a {source.kind} source can take "
                             f"({', '.join(objectives)})")
        if source.objective == "mlm" and source.single_turn:
            raise ValueError("single_turn picks a question to answer; an mlm chat source has no answer to generate")
        return source


# The objectives each kind of source can be trained with: every kind but preference pairs has the text that
# masking needs.
OBJECTIVES: dict[str, tuple[str, ...]] = {kind: ("causal", "mlm") for kind in KINDS}
OBJECTIVES["preference"] = ("causal",)  # a preference pair is scored by its answers' likelihoods


def _number(spec: dict[str, Any], name: str, default: float) -> float:
    value = spec.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"source {name} must be a number, got {value!r}")
    return float(value)


def source_names(sources: Sequence[Source]) -> list[str]:
    """Each source's name in per-source counts: its kind, or kind[i] when several sources share a kind."""
    kinds = Counter(source.kind for source in sources)
    return [s.kind if kinds[s.kind] == 1 else f"{s.kind}[{i}]" for i, s in enumerate(sources)]


class MixtureDataset(IterableDataset):
    """The weighted mixture of `sources` for one rank: batches (with a batch size) or samples (without).
    `make_loader` (or `.loader()`) serves it through a DataLoader.

    With `processor=None` it yields decoded `shards.Sample`s (no tokenizing), for tools and tests.
    `delivered` counts the samples this process yielded per source name (see `source_names`).
    rank / world_size default to torch.distributed's when it is initialised, else 0 / 1.
    """

    def __init__(
        self,
        sources: Sequence[Source | dict[str, Any]],
        processor: Processor | None = None,
        batch_size: int | None = None,
        *,
        num_workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        **options: Any,
    ) -> None:
        """options: the fields of `StreamOptions` (seed, resampled, shuffle, shuffle_buffer, packing, max_length)."""
        super().__init__()
        options = StreamOptions(**options)
        check_rate(options.mlm_rate)
        self.sources = [source for source in map(Source.of, sources) if source.weight > 0]
        if not self.sources:
            raise ValueError("a mixture needs at least one source with a weight above 0")
        if batch_size is not None and (batch_size < 1 or processor is None):
            raise ValueError("batching needs a processor and a batch size >= 1")
        if options.packing and (batch_size is None or not options.max_length):
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
        self.options = options
        self.num_workers = num_workers
        self.rank, self.world_size = rank, world_size
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
        streams = [source_stream(shard_set, source.kind, slot, self.options, self.epoch, self.handler,
                                 self.processor, source.single_turn, max_pixels, source.objective)
                   for source, shard_set in zip(self.sources, self.shard_sets)]
        cumulative = list(itertools.accumulate(source.weight for source in self.sources))
        rng = slot_rng(self.options.seed, self.epoch, slot, "source choice")
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
        if self.options.packing:
            return pack_batches(samples, self.batch_size, self.options.max_length, self.processor.pad_id,
                                self.batches_per_slot(slot.count), self.handler)
        epoch_samples = itertools.islice(samples, self.samples_per_slot(slot.count))
        return batch_samples(epoch_samples, self.batch_size, self.processor.pad_id, self.handler)

    def loader(self, pin_memory: bool = False) -> "MixtureLoader":
        """The DataLoader that serves this dataset's batches with its `num_workers` worker processes.
        Each batch is the collate (or pack) batch dict plus `skipped` (see bad_samples.BadSampleCounter)."""
        return MixtureLoader(self, num_workers=self.num_workers,
                             pin_memory=pin_memory and torch.cuda.is_available(), persistent_workers=False)


def make_loader(sources: Sequence[Source | dict[str, Any]], processor: Processor, batch_size: int,
                pin_memory: bool = False, **dataset_options: Any) -> "MixtureLoader":
    """A DataLoader of batches from a weighted mixture of sources for this rank: `MixtureDataset(sources,
    processor, batch_size, **dataset_options).loader()`. `len(loader)` is the batches per epoch on this rank."""
    return MixtureDataset(sources, processor, batch_size, **dataset_options).loader(pin_memory)


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
