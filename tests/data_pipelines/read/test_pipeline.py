"""The staged pipeline across ranks and dataloader workers: exactly-once epochs on even shards, equal batch counts
(no DDP hang) on uneven ones, resampling, shard lists from folders and brace patterns, lengths from sizes.json."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest
import torch
from shard_fixtures import caption_sample, text_sample, tiny_processor, write_shards

from data_pipelines.read.bad_samples import BadSampleHandler
from data_pipelines.read.loader import (
    MixtureDataset,
    MixtureLoader,
    Slot,
    StreamOptions,
    make_loader,
    pack_batches,
    source_stream,
)
from data_pipelines.read.shards import expand_shards, load_shard_set

pytestmark = pytest.mark.timeout(120)  # a rank that waits forever fails here instead of hanging the suite


def text_shards(folder, shard_sizes):
    """Text shards with globally unique keys; returns every key."""
    shards, index = [], 0
    for size in shard_sizes:
        shards.append([text_sample(index + i) for i in range(size)])
        index += size
    write_shards(folder, shards)
    return {sample["__key__"] for shard in shards for sample in shard}


def keys_seen_by_rank(folder, rank, world_size, num_workers, epoch=0, resampled=False):
    dataset = MixtureDataset([{"kind": "text", "path": str(folder)}], num_workers=num_workers, rank=rank,
                             world_size=world_size, resampled=resampled, shuffle_buffer=4)
    loader = MixtureLoader(dataset, num_workers=num_workers)
    loader.set_epoch(epoch)
    keys = [sample.key for sample in loader]
    assert len(keys) == len(loader)  # the known length is what each rank really yields
    return keys


def test_two_ranks_two_workers_see_every_sample_exactly_once_per_epoch(tmp_path):
    expected = text_shards(tmp_path, [5] * 8)
    for epoch in (0, 1):
        seen = Counter()
        for rank in (0, 1):
            seen.update(keys_seen_by_rank(tmp_path, rank, 2, num_workers=2, epoch=epoch))
        assert set(seen) == expected and set(seen.values()) == {1}


def test_fewer_shards_than_slots_split_samples_and_still_read_each_once(tmp_path):
    expected = text_shards(tmp_path, [4, 4, 4])  # 3 shards, 4 slots (2 ranks x 2 workers)
    seen = Counter()
    for rank in (0, 1):
        seen.update(keys_seen_by_rank(tmp_path, rank, 2, num_workers=2))
    assert set(seen) == expected and set(seen.values()) == {1}


def test_uneven_shards_give_every_rank_the_same_number_of_batches(tmp_path):
    text_shards(tmp_path, [7, 3, 9, 2, 5])  # 5 shards of different sizes over 2 ranks x 2 workers
    processor = tiny_processor()
    batch_counts = []
    for rank in (0, 1):
        loader = make_loader([{"kind": "text", "path": str(tmp_path)}], processor, batch_size=3, num_workers=2,
                             rank=rank, world_size=2)
        batches = list(loader)
        assert len(batches) == len(loader)
        batch_counts.append(len(batches))
    # ceil(26 samples / 4 slots) = 7 per worker -> 3 batches (3, 3, 1) per worker, 6 per rank
    assert batch_counts == [6, 6]


def test_uneven_shards_over_ranks_without_workers_cover_the_data(tmp_path):
    expected = text_shards(tmp_path, [6, 6, 6])  # 3 shards over 2 ranks: rank 0 is dealt 2, rank 1 is dealt 1
    per_rank = [keys_seen_by_rank(tmp_path, rank, 2, num_workers=0) for rank in (0, 1)]
    assert [len(keys) for keys in per_rank] == [9, 9]  # equal shares of 18, so no rank waits
    seen = set(per_rank[0]) | set(per_rank[1])
    assert seen <= expected and len(seen) >= 15  # rank 1 repeats 3 of its own; rank 0 leaves 3


def test_epochs_reshuffle_but_same_seed_and_epoch_repeat_exactly(tmp_path):
    text_shards(tmp_path, [10] * 4)
    first = keys_seen_by_rank(tmp_path, 0, 1, num_workers=0, epoch=0)
    again = keys_seen_by_rank(tmp_path, 0, 1, num_workers=0, epoch=0)
    second = keys_seen_by_rank(tmp_path, 0, 1, num_workers=0, epoch=1)
    assert first == again
    assert first != second and sorted(first) == sorted(second)


def test_loader_advances_epoch_on_each_pass(tmp_path):
    text_shards(tmp_path, [10] * 4)
    loader = MixtureLoader(MixtureDataset([{"kind": "text", "path": str(tmp_path)}], shuffle_buffer=8))
    passes = [[sample.key for sample in loader] for _ in range(2)]
    assert passes[0] != passes[1] and sorted(passes[0]) == sorted(passes[1])


def test_resampled_mode_yields_the_epoch_length_from_random_shards_per_slot(tmp_path):
    expected = text_shards(tmp_path, [5] * 4)
    per_rank = [keys_seen_by_rank(tmp_path, rank, 2, num_workers=2, resampled=True) for rank in (0, 1)]
    assert [len(keys) for keys in per_rank] == [10, 10]
    assert set(per_rank[0]) | set(per_rank[1]) <= expected
    assert per_rank[0] != per_rank[1]


def test_folder_and_brace_pattern_list_the_same_shards_with_sizes_from_sizes_json(tmp_path):
    text_shards(tmp_path, [3, 4, 5])
    folder = load_shard_set(tmp_path)
    braces = load_shard_set(f"{tmp_path}/{{00000..00002}}.tar")
    assert folder == braces
    assert folder.sizes == (3, 4, 5) and folder.num_samples == 12
    assert expand_shards([str(tmp_path / "00001.tar"), f"{tmp_path}/{{00000..00000}}.tar"]) == [
        str(tmp_path / "00001.tar"), str(tmp_path / "00000.tar")]


def test_sizes_json_is_the_length_and_missing_entries_are_counted_from_tar_headers(tmp_path):
    text_shards(tmp_path, [3, 4])
    (tmp_path / "sizes.json").write_text(json.dumps({"00000.tar": 30}))  # says 30; 00001 missing
    assert load_shard_set(tmp_path).sizes == (30, 4)
    dataset = MixtureDataset([{"kind": "text", "path": str(tmp_path)}], tiny_processor(), batch_size=4,
                             num_workers=2, rank=0, world_size=2)
    assert len(dataset) == 2 * 3  # ceil(34 / 4 slots) = 9 samples per worker -> 3 batches; 2 workers


def test_missing_shards_are_reported_by_name(tmp_path):
    text_shards(tmp_path / "three", [1, 1, 1])
    with pytest.raises(FileNotFoundError, match="00003.tar"):
        expand_shards(f"{tmp_path}/three/{{00000..00003}}.tar")
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        expand_shards(tmp_path)


def test_packed_batches_fill_at_most_batch_size_rows_of_max_length_tokens(tmp_path):
    text_shards(tmp_path, [20])
    processor = tiny_processor()
    stream = source_stream(load_shard_set(tmp_path), "text", Slot(), StreamOptions(shuffle=False), 0,
                           BadSampleHandler(), processor)
    batches = list(pack_batches(stream, batch_size=2, max_length=24, pad_id=processor.pad_id, num_batches=3,
                                handler=BadSampleHandler()))
    assert len(batches) == 3 and all("skipped" in batch for batch in batches)
    for batch in batches:
        assert batch["input_ids"].shape[0] <= 2 and batch["input_ids"].shape[1] <= 24
    # The stream is consumed in order with nothing lost between batches: batch k packs the next samples.
    packed = [int(n) for batch in batches for row in batch["segment_ids"]
              for n in torch.bincount(row)[1:].tolist() if n]
    again = source_stream(load_shard_set(tmp_path), "text", Slot(), StreamOptions(shuffle=False), 0,
                          BadSampleHandler(), processor)
    lengths = [len(sample) for sample in itertools.islice(again, len(packed))]
    assert sorted(packed) == sorted(lengths)


def test_make_loader_batches_follow_the_batch_contract(tmp_path):
    write_shards(tmp_path / "caps", [[caption_sample(i) for i in range(6)]])
    loader = make_loader([{"kind": "caption", "path": str(tmp_path / "caps")}], tiny_processor(), batch_size=4)
    batches = list(loader)
    assert [len(batch["kinds"]) for batch in batches] == [4, 2]
    batch = batches[0]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["pixel_values"].shape == (4, 3, 16, 16)
    assert batch["image_counts"].tolist() == [1, 1, 1, 1]
    assert batch["kinds"] == ["caption"] * 4 and batch["skipped"] == {}
