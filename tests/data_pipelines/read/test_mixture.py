"""The weighted mixture: each source delivered in proportion to its weight, small sources restart, sources
are validated, and a mixed loader's batches name each row's source."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from shard_fixtures import caption_sample, chat_sample, text_sample, tiny_processor, write_shards

from data_pipelines.read.bad_samples import BadSampleHandler
from data_pipelines.read.loader import MixtureDataset, Source, make_loader, source_names
from data_pipelines.read.loader import single_turn
from data_pipelines.read.shards import parse_samples


def parse_chat(raw: dict):
    return next(parse_samples([raw], "chat", BadSampleHandler()))

pytestmark = pytest.mark.timeout(120)


def write_text_source(folder, prefix, count, per_shard=50):
    samples = [{**text_sample(i), "__key__": f"{prefix}{i:05d}"} for i in range(count)]
    write_shards(folder, [samples[i:i + per_shard] for i in range(0, count, per_shard)])


def test_each_source_is_delivered_within_five_percent_of_its_weight(tmp_path):
    write_text_source(tmp_path / "a", "a", 1000)
    write_text_source(tmp_path / "b", "b", 1000)
    write_text_source(tmp_path / "c", "c", 1000)
    sources = [{"kind": "text", "path": str(tmp_path / name), "weight": weight}
               for name, weight in (("a", 1.0), ("b", 2.0), ("c", 5.0))]
    dataset = MixtureDataset(sources, seed=3, shuffle_buffer=16)
    samples = list(dataset)
    assert len(samples) == 3000
    by_prefix = Counter(sample.key[0] for sample in samples)
    for name, weight in (("a", 1 / 8), ("b", 2 / 8), ("c", 5 / 8)):
        assert abs(by_prefix[name] / 3000 - weight) < 0.05 * weight, by_prefix
    assert dataset.delivered == Counter({"text[0]": by_prefix["a"], "text[1]": by_prefix["b"],
                                         "text[2]": by_prefix["c"]})


def test_a_small_heavily_weighted_source_restarts_when_exhausted(tmp_path):
    write_text_source(tmp_path / "small", "s", 20, per_shard=10)
    write_text_source(tmp_path / "large", "l", 400)
    dataset = MixtureDataset([{"kind": "text", "path": str(tmp_path / "small"), "weight": 1},
                              {"kind": "text", "path": str(tmp_path / "large"), "weight": 1}], seed=0)
    keys = Counter(sample.key for sample in dataset)
    small = {key: n for key, n in keys.items() if key.startswith("s")}
    assert sum(keys.values()) == 420
    assert len(small) == 20 and min(small.values()) >= 5  # ~210 draws over 20 samples: every one many times


def test_mixture_of_kinds_yields_batches_naming_each_rows_source(tmp_path):
    write_shards(tmp_path / "caps", [[caption_sample(i) for i in range(8)]])
    write_shards(tmp_path / "chat", [[chat_sample(i) for i in range(8)]])
    write_shards(tmp_path / "text", [[text_sample(i) for i in range(8)]])
    sources = [{"kind": kind, "path": str(tmp_path / folder)}
               for kind, folder in (("caption", "caps"), ("chat", "chat"), ("text", "text"))]
    loader = make_loader(sources, tiny_processor(), batch_size=6, seed=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 4  # 24 samples in all
    kinds = Counter(kind for batch in batches for kind in batch["kinds"])
    assert set(kinds) == {"caption", "chat", "text"} and sum(kinds.values()) == 24
    for batch in batches:  # image rows and image blocks agree
        images = [kind != "text" for kind in batch["kinds"]]
        assert batch["image_counts"].tolist() == [int(has_image) for has_image in images]


def test_packed_mixture_has_the_same_number_of_steps_as_unpacked(tmp_path):
    write_text_source(tmp_path / "t", "t", 40, per_shard=10)
    processor = tiny_processor(max_length=32)
    sources = [{"kind": "text", "path": str(tmp_path / "t")}]
    unpacked = make_loader(sources, processor, batch_size=4)
    packed = make_loader(sources, processor, batch_size=4, packing=True, max_length=32)
    packed_batches = list(packed)
    assert len(packed_batches) == len(packed) == len(unpacked) == 10
    for batch in packed_batches:
        assert batch["input_ids"].shape[0] <= 4 and batch["input_ids"].shape[1] <= 32
        assert batch["segment_ids"].max() > 1  # rows really hold several samples


def test_source_specs_are_validated():
    assert Source.of({"kind": "chat", "path": "x"}) == Source("chat", "x", 1.0)
    with pytest.raises(ValueError, match="kind"):
        Source.of({"kind": "audio", "path": "x"})
    with pytest.raises(ValueError, match="weight"):
        Source.of({"kind": "chat", "path": "x", "weight": -1})
    with pytest.raises(ValueError, match="kind, path, weight"):
        Source.of({"kind": "chat", "path": "x", "wieght": 2})
    with pytest.raises(ValueError, match="above 0"):
        MixtureDataset([{"kind": "chat", "path": "x", "weight": 0}])


def test_source_names_are_kinds_numbered_only_when_repeated():
    sources = [Source("chat", "a"), Source("text", "b"), Source("chat", "c")]
    assert source_names(sources) == ["chat[0]", "text", "chat[2]"]


def multi_turn_chat(index: int) -> dict:
    sample = chat_sample(index)
    turns = [{"from": "system", "value": "Be brief."}]
    for q in range(3):
        turns += [{"from": "human", "value": ("<image>\n" if q == 0 else "") + f"question {index}.{q}"},
                  {"from": "gpt", "value": f"answer {index}.{q}"}]
    sample["json"] = json.dumps({"conversations": turns}).encode()
    return sample


def test_single_turn_presents_one_question_of_a_conversation_first_with_the_image(tmp_path):
    write_shards(tmp_path / "chat", [[multi_turn_chat(i) for i in range(40)]])
    whole = list(MixtureDataset([{"kind": "chat", "path": str(tmp_path / "chat")}], seed=0))
    single = list(MixtureDataset([{"kind": "chat", "path": str(tmp_path / "chat"), "single_turn": 1.0}], seed=0))
    assert all(len(sample.conversation) == 7 for sample in whole)
    asked = Counter()
    for sample in single:
        system, user, assistant = sample.conversation
        assert system == {"role": "system", "content": "Be brief."}
        number = user["content"].removeprefix("<image>\nquestion ")  # the marker leads the one question
        assert assistant == {"role": "assistant", "content": f"answer {number}"}
        asked[number.split(".")[1]] += 1
    assert len(asked) == 3 and min(asked.values()) >= 5  # every turn gets asked first
    half = list(MixtureDataset([{"kind": "chat", "path": str(tmp_path / "chat"), "single_turn": 0.5}], seed=0))
    assert 8 <= sum(len(s.conversation) == 3 for s in half) <= 32
    one_question = single_turn(parse_chat(chat_sample(0)), random.Random(0))  # nothing to choose: unchanged
    assert len(one_question.conversation) == 2


def test_single_turn_is_a_probability_for_chat_sources_only():
    for bad in ({"kind": "chat", "path": "x", "single_turn": 1.5}, {"kind": "caption", "path": "x", "single_turn": 0.5}):
        with pytest.raises(ValueError, match="single_turn"):
            Source.of(bad)
    assert Source.of({"kind": "chat", "path": "x", "single_turn": 0.25}).single_turn == 0.25
