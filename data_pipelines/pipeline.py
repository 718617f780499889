"""The staged shard pipeline, one small function per stage, in open_clip's order:

    shard list -> shuffle shards -> split by node -> split by worker -> tar to samples -> shuffle
    (compressed bytes) -> parse -> decode images -> preprocess (tokenize) -> batch (collate or pack)

Every stage runs inside one dataloader worker of one rank (a "slot"); rank and world size are explicit
arguments, never read from the environment here. Failures at any stage go to the one `BadSampleHandler`.

Epochs and DDP safety (non-resampled mode). Each pass over a source shuffles its shard list with a seed
shared by all ranks, then deals shards round-robin to ranks and, within a rank, to workers, so one pass
reads every shard exactly once across all slots. When a source has fewer shards than slots, every slot
reads all of them and keeps every `slots`-th sample instead. A slot's stream cycles pass after pass (a new
shard order each time), and the epoch stops each slot after the same number of samples,
`ceil(total samples from sizes.json / slots)`: slots dealt less data repeat some of theirs, slots dealt
more leave a few for the next epoch, and no rank ever waits for another. When the shards split evenly
(every slot dealt the same count) an epoch is exactly one pass: every sample once. Because the count is
known from sizes.json, the loader has a length (batches per rank) for the progress bar.

Resampled mode (multi-node pretraining, open_clip's `--dataset-resampled`): each slot draws shards with
replacement from its own seeded RNG, forever; an epoch is the same number of samples as above.
"""

from __future__ import annotations

import itertools
import math
import random
import tarfile
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator

import torch
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from data_pipelines.bad_samples import SKIPPED_KEY, BadSampleHandler
from data_pipelines.formats import Sample, parse_sample
from data_pipelines.images import DEFAULT_MAX_PIXELS, load_image
from data_pipelines.processor import EncodedSample, Processor
from data_pipelines.shard_lists import ShardSet
from data_pipelines.special_tokens import IMAGE_MARKER

DEFAULT_SHUFFLE_BUFFER = 1000  # samples (compressed) held by the shuffle stage


class TruncatedShard(tarfile.ReadError):
    """A tar shard that ends inside a member; the samples before the cut are kept, the cut one is counted."""

    reason = "truncated tar member"


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


# -- stage: tar to samples --

def tar_samples(shards: Iterable[str], handler: BadSampleHandler) -> Iterator[dict[str, Any]]:
    """Tar shards -> webdataset sample dicts `{"__key__", "__url__", ext: bytes, ...}`, grouped by key.

    A shard that ends inside a member (a truncated copy) yields the samples before the cut; the cut sample
    goes to the handler once, as "truncated tar member"; a shard that cannot be opened goes there too.
    """
    for shard in shards:
        yield from _shard_samples(shard, handler)


def _shard_samples(shard: str, handler: BadSampleHandler) -> Iterator[dict[str, Any]]:
    current: dict[str, Any] | None = None
    try:
        with gopen(shard, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, extension = base_plus_ext(member.name)
                if key is None:
                    continue
                data = tar.extractfile(member).read()
                if current is not None and key != current["__key__"]:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": shard}
                current[extension.lower()] = data
    except (tarfile.TarError, OSError, EOFError) as exn:
        key = current["__key__"] if current else "?"
        handler(TruncatedShard(f"{shard}: stopped at sample {key}: {exn}"))
        return
    if current is not None:
        yield current


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


# -- stages: parse, decode, preprocess --

def skip_bad(items: Iterable, transform: Callable[[Any], Any], handler: BadSampleHandler) -> Iterator:
    """`transform` each item; an item whose transform raises is skipped and goes to the handler."""
    for item in items:
        try:
            result = transform(item)
        except Exception as exn:  # any failure of one sample is that sample's problem, never the run's
            handler(exn)
            continue
        yield result


def parse_samples(raws: Iterable[dict], kind: str, handler: BadSampleHandler) -> Iterator[Sample]:
    """Webdataset sample dicts -> canonical `Sample`s (images still compressed)."""
    return skip_bad(raws, lambda raw: parse_sample(kind, raw), handler)


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


def decode_sample(sample: Sample, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Sample:
    """A `Sample` whose images are decoded RGB PIL images (BadImage / ImageTooLarge for bad ones)."""
    if not sample.images:
        return sample
    return replace(sample, images=[load_image(image, max_pixels=max_pixels) for image in sample.images])


def decode_samples(samples: Iterable[Sample], handler: BadSampleHandler,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[Sample]:
    return skip_bad(samples, lambda sample: decode_sample(sample, max_pixels), handler)


def preprocess_samples(samples: Iterable[Sample], processor: Processor, handler: BadSampleHandler
                       ) -> Iterator[EncodedSample]:
    """Decoded `Sample`s -> `EncodedSample`s (token ids, labels, pixel tensors) by the one Processor.

    A text document longer than the processor's max_length becomes several consecutive pieces rather than
    being cut short, so no text is thrown away; captions and chats give one encoded sample each.
    """
    for pieces in skip_bad(samples, lambda sample: encode_pieces(sample, processor), handler):
        yield from pieces


def encode_pieces(sample: Sample, processor: Processor) -> list[EncodedSample]:
    if sample.kind == "text":
        return processor.encode_text_chunks(sample.text)
    return [processor.encode_sample(sample)]


# -- one source in one slot: the stages chained, pass after pass --

@dataclass(frozen=True)
class StreamOptions:
    """How a source is streamed: shuffling, resampling, seed and epoch, and the decode guard."""

    seed: int = 0
    epoch: int = 0
    resampled: bool = False
    shuffle: bool = True  # shard order and sample shuffle buffer; False reads shards in order
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    max_pixels: int | None = DEFAULT_MAX_PIXELS


def pass_shards(source: ShardSet, slot: Slot, options: StreamOptions, pass_index: int) -> tuple[list[str], int, int]:
    """(shards this slot reads in this pass, start, step): the slot keeps samples start, start + step, ...

    Non-resampled: shuffle (shared seed) -> split by node -> split by worker; with fewer shards than slots,
    every slot reads every shard and keeps every `slots`-th sample. Resampled: len(source) random shards.
    """
    shards = list(source.shards)
    if options.resampled:
        rng = slot_rng(options.seed, options.epoch, slot, "resampled shards", pass_index)
        return resampled_shards(shards, rng, len(shards)), 0, 1
    order_rng = slot_rng(options.seed, options.epoch, None, "shard order", pass_index) if options.shuffle else None
    order = shuffle_shards(shards, order_rng)
    if len(order) >= slot.count:
        return split_by_worker(split_by_node(order, slot), slot), 0, 1
    step = max(1, min(slot.count, source.num_samples))  # fewer samples than slots: slots share samples
    return order, slot.index % step, step


def source_pass(source: ShardSet, kind: str, slot: Slot, options: StreamOptions, pass_index: int,
                handler: BadSampleHandler, processor: Processor | None = None, single_turn: float = 0.0) -> Iterator:
    """One pass of one source in one slot, through every stage up to preprocess (decode only without processor);
    chats become single-turn with probability `single_turn`."""
    shards, start, step = pass_shards(source, slot, options, pass_index)
    raws = keep_every(tar_samples(shards, handler), start, step)
    buffer = options.shuffle_buffer if options.shuffle else 0
    raws = shuffle_samples(raws, buffer, slot_rng(options.seed, options.epoch, slot, "sample shuffle", pass_index))
    samples = parse_samples(raws, kind, handler)
    if single_turn > 0 and kind == "chat":
        samples = single_turn_samples(samples, single_turn,
                                      slot_rng(options.seed, options.epoch, slot, "single turn", pass_index))
    samples = decode_samples(samples, handler, options.max_pixels)
    return samples if processor is None else preprocess_samples(samples, processor, handler)


def source_stream(source: ShardSet, kind: str, slot: Slot, options: StreamOptions, handler: BadSampleHandler,
                  processor: Processor | None = None, single_turn: float = 0.0) -> Iterator:
    """An endless stream of one source's samples for one slot: pass after pass, a new shard order each time.

    Raises RuntimeError when a whole pass yields no usable sample (every sample bad), instead of spinning.
    """
    for pass_index in itertools.count():
        usable = 0
        for item in source_pass(source, kind, slot, options, pass_index, handler, processor, single_turn):
            usable += 1
            yield item
        if usable == 0:
            raise RuntimeError(
                f"no usable {kind} sample in a whole pass over {len(source)} shards (first {source.shards[0]}); "
                f"skipped so far: {dict(handler.counts)}")


# -- stage: batch --

def batch_samples(items: Iterable, batch_size: int, collate_fn: Callable[[list], dict],
                  handler: BadSampleHandler) -> Iterator[dict]:
    """Group items into batches (the last one may be smaller); each batch carries the skipped-sample counts
    of this worker since its previous batch as `batch["skipped"]` ({reason: samples})."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield _with_skipped(collate_fn(batch), handler)
            batch = []
    if batch:
        yield _with_skipped(collate_fn(batch), handler)


def pack_batches(items: Iterable, batch_size: int, max_length: int, pack_fn: Callable[[list], dict],
                 num_batches: int, handler: BadSampleHandler) -> Iterator[dict]:
    """Sequence packing: gather samples while first-fit packing (collate.pack_rows' rule) keeps them in at most
    `batch_size` rows of `max_length` tokens, then `pack_fn(group)` builds the batch; `num_batches` batches."""
    items = iter(items)
    pending: list = []  # the sample that did not fit the previous batch
    for _ in range(num_batches):
        group, room = [], []  # room: free tokens left in each row, as first-fit fills them
        while True:
            item = pending.pop() if pending else next(items)
            tokens = min(len(item), max_length)
            row = next((r for r, free in enumerate(room) if free >= tokens), None)
            if row is None and len(room) == batch_size:
                pending.append(item)
                break
            if row is None:
                room.append(max_length)
                row = len(room) - 1
            room[row] -= tokens
            group.append(item)
        yield _with_skipped(pack_fn(group), handler)


def _with_skipped(batch: dict, handler: BadSampleHandler) -> dict:
    # a plain dict: torch's default_convert copies a Counter with Counter.update, which would double it
    batch[SKIPPED_KEY] = dict(handler.take_unreported())
    return batch
