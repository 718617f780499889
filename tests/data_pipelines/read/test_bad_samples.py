"""The one bad-sample handler: every kind of broken sample in a shard is skipped and counted by reason, the good
ones around it all arrive, logging is throttled, and counts travel to the main process with the batches."""

from __future__ import annotations

import json
import logging
import re
import tarfile
from collections import Counter

from shard_fixtures import (
    caption_sample,
    chat_sample,
    huge_png_header,
    png_bytes,
    tiny_processor,
    truncate_last_member,
    write_shards,
)

from data_pipelines.chat.conversation import NoSupervisedTokens
from data_pipelines.images import BadImage, ImageTooLarge
from data_pipelines.read.bad_samples import BadSampleCounter, BadSampleHandler, reason_of
from data_pipelines.read.loader import Slot, StreamOptions, make_loader, source_pass
from data_pipelines.read.shards import BadSample, load_shard_set, tar_samples


def test_reason_of_names_each_failure_class():
    assert reason_of(BadImage("x")) == "corrupt image"
    assert reason_of(ImageTooLarge("x")) == "image too large"
    assert reason_of(NoSupervisedTokens("x")) == "no supervised token"
    assert reason_of(tarfile.ReadError("unexpected end of data")) == "truncated tar member"
    assert reason_of(BadSample("empty caption")) == "empty caption"
    assert reason_of(json.JSONDecodeError("x", "doc", 0)) == "invalid json"
    assert reason_of(KeyError("x")) == "other: KeyError"


def test_handler_continues_counts_and_throttles_logging(caplog):
    handler = BadSampleHandler(log_first=2, log_every=10, log_interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="data_pipelines.read.bad_samples"):
        results = [handler(BadImage(f"broken {i}")) for i in range(25)]
    assert all(results)  # webdataset's handler protocol: True means "skip and continue"
    assert handler.counts == Counter({"corrupt image": 25})
    one_by_one = [r for r in caplog.records if "skipping a bad sample" in r.getMessage()]
    summaries = [r for r in caplog.records if "bad samples so far" in r.getMessage()]
    assert len(one_by_one) == 2
    assert len(summaries) == 2  # at 10 and 20 skipped, not 23 more lines


def test_unreported_counts_reset_and_counter_absorbs_them_from_batches():
    handler = BadSampleHandler()
    handler(BadImage("a"))
    handler(BadSample("empty caption"))
    first = {"input_ids": None, "skipped": handler.take_unreported()}
    second = {"input_ids": None, "skipped": handler.take_unreported()}
    counter = BadSampleCounter()
    for batch in (first, second):
        assert "skipped" not in counter.absorb(batch)
    assert counter.counts == Counter({"corrupt image": 1, "empty caption": 1})
    assert counter.summary() == "skipped 2 bad samples: corrupt image 1, empty caption 1"


def write_broken_caption_shards(folder):
    """Two caption shards with one good sample around every kind of bad one; the second is cut short."""
    bad = [
        {"__key__": "b-corrupt-jpeg", "jpg": b"\xff\xd8\xff\xe0" + b"garbage" * 20, "txt": b"bad"},
        {"__key__": "b-truncated-png", "png": png_bytes(size=32)[:60], "txt": b"bad"},
        {"__key__": "b-empty-caption", "png": png_bytes(), "txt": b"  "},
        {"__key__": "b-invalid-json", "png": png_bytes(), "txt": b"ok", "json": b"{oops"},
        {"__key__": "b-non-utf8", "png": png_bytes(), "txt": b"caf\xe9"},
        {"__key__": "b-huge-image", "png": huge_png_header(), "txt": b"bad"},
        {"__key__": "b-no-image", "txt": b"a caption"},
    ]
    first = []
    for index, sample in enumerate(bad):
        first += [caption_sample(2 * index), sample]
    first.append(caption_sample(100))
    second = [caption_sample(200), caption_sample(201), caption_sample(202)]
    paths = write_shards(folder, [first, second])
    truncate_last_member(paths[1])  # caption 202's caption text is cut: the whole sample is lost
    return {f"caption {2 * i}" for i in range(len(bad))} | {"caption 100", "caption 200", "caption 201"}


EXPECTED_CAPTION_REASONS = Counter({"corrupt image": 2, "empty caption": 1, "invalid json": 1, "non-utf8 text": 1,
                                    "image too large": 1, "missing image": 1, "truncated tar member": 1})


def test_every_bad_caption_sample_is_skipped_by_reason_and_every_good_one_arrives(tmp_path):
    good = write_broken_caption_shards(tmp_path / "captions")
    handler = BadSampleHandler()
    source = load_shard_set(tmp_path / "captions")
    options = StreamOptions(shuffle=False)
    processor = tiny_processor()
    encoded = list(source_pass(source, "caption", Slot(), options, 0, 0, handler, processor))
    arrived = [re.search(r"caption \d+", processor.decode(sample.input_ids)).group(0) for sample in encoded]
    assert sorted(arrived) == sorted(good)  # each good sample exactly once
    assert handler.counts == EXPECTED_CAPTION_REASONS


def test_chat_without_assistant_turn_is_counted_as_no_supervised_token(tmp_path):
    no_answer = {"__key__": "b-no-gpt", "png": png_bytes(),
                 "json": json.dumps({"conversations": [{"from": "human", "value": "<image>\nQ?"}]}).encode()}
    write_shards(tmp_path / "chat", [[chat_sample(0), no_answer, chat_sample(1, image=False)]])
    handler = BadSampleHandler()
    processor = tiny_processor()
    encoded = list(source_pass(load_shard_set(tmp_path / "chat"), "chat", Slot(), StreamOptions(shuffle=False), 0,
                               0, handler, processor))
    answers = [re.search(r"answer \d+", processor.decode(sample.input_ids)).group(0) for sample in encoded]
    assert answers == ["answer 0", "answer 1"]
    assert handler.counts == Counter({"no supervised token": 1})


def test_truncated_shard_keeps_samples_before_the_cut_and_counts_the_cut_once(tmp_path):
    paths = write_shards(tmp_path, [[caption_sample(i) for i in range(4)]])
    truncate_last_member(paths[0])
    handler = BadSampleHandler()
    keys = [sample["__key__"] for sample in tar_samples([str(paths[0])], handler)]
    assert keys == ["c00000", "c00001", "c00002"]
    assert handler.counts == Counter({"truncated tar member": 1})


def test_loader_batches_carry_skipped_counts_that_sum_to_the_handlers(tmp_path):
    write_broken_caption_shards(tmp_path / "captions")
    loader = make_loader([{"kind": "caption", "path": str(tmp_path / "captions")}], tiny_processor(), batch_size=4,
                         shuffle_buffer=0)
    counter = BadSampleCounter()
    batches = [counter.absorb(batch) for batch in loader]
    assert len(batches) == len(loader)
    assert all("skipped" not in batch for batch in batches)
    # An epoch is as many samples as sizes.json counts (18), so the stream wraps into a second pass to
    # replace the 8 bad ones, and meets some of them again there: each is still counted once.
    assert counter.counts == EXPECTED_CAPTION_REASONS
    assert counter.counts == loader.dataset.handler.counts  # no worker processes: one handler saw everything
    assert sum(len(batch["kinds"]) for batch in batches) == 18


def test_a_bad_sample_is_logged_by_shard_and_key_and_counted_once_however_often_met(tmp_path, caplog):
    write_broken_caption_shards(tmp_path / "captions")
    handler = BadSampleHandler()
    processor = tiny_processor()
    source = load_shard_set(tmp_path / "captions")
    with caplog.at_level(logging.WARNING, logger="data_pipelines.read.bad_samples"):
        for pass_index in range(3):  # three passes over the same shards meet every bad sample three times
            list(source_pass(source, "caption", Slot(), StreamOptions(shuffle=False), 0, pass_index, handler,
                             processor))
    assert handler.counts == EXPECTED_CAPTION_REASONS
    corrupt = [r.getMessage() for r in caplog.records if "(corrupt image)" in r.getMessage()]
    assert len(corrupt) == 2 and all("00000.tar:b-" in message for message in corrupt), corrupt
    assert not any("object at 0x" in r.getMessage() for r in caplog.records)
