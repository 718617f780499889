"""formats.parse_sample: webdataset sample dicts -> canonical Samples, and the reasons malformed ones are refused."""

from __future__ import annotations

import json

import pytest
from shard_fixtures import png_bytes

from data_pipelines.read.shards import BadSample, parse_sample
from data_pipelines.chat.special_tokens import CAPTION_INSTRUCTION


def raw(key="k1", **members):
    return {"__key__": key, "__url__": "shard.tar", **members}


def test_caption_sample_becomes_one_turn_conversation_with_compressed_image():
    image = png_bytes()
    sample = parse_sample("caption", raw(png=image, txt=b"  a red square \n"))
    assert sample.kind == "caption" and sample.key == "k1"
    assert sample.conversation == [{"role": "user", "content": "<image>\n" + CAPTION_INSTRUCTION},
                                   {"role": "assistant", "content": "a red square"}]
    assert sample.images == [image]  # still bytes: decoding is a later stage
    assert sample.meta["references"] == ["a red square"]


def test_caption_json_captions_are_kept_as_references():
    meta = json.dumps({"captions": ["one", "two"], "source": "coco"}).encode()
    sample = parse_sample("caption", raw(jpg=b"jpegbytes", txt=b"one", json=meta))
    assert sample.meta["references"] == ["one", "two"]
    assert sample.meta["source"] == "coco"
    assert sample.images == [b"jpegbytes"]


@pytest.mark.parametrize("members, reason", [
    ({"png": b"x", "txt": b"   \n"}, "empty caption"),
    ({"png": b"x"}, "missing caption"),
    ({"txt": b"a caption"}, "missing image"),
    ({"png": b"x", "txt": b"\xff\xfe caption"}, "non-utf8 text"),
    ({"png": b"x", "txt": b"ok", "json": b"{not json"}, "invalid json"),
])
def test_malformed_caption_samples_raise_bad_sample_with_reason(members, reason):
    with pytest.raises(BadSample) as info:
        parse_sample("caption", raw(**members))
    assert info.value.reason == reason


def test_llava_and_openai_chat_rows_normalise_to_the_same_conversation():
    llava = {"conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]}
    openai = {"messages": [{"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "A cat."}]}
    image = png_bytes()
    a = parse_sample("chat", raw(json=json.dumps(llava).encode(), png=image))
    b = parse_sample("chat", raw(json=json.dumps(openai).encode(), png=image))
    expected = [{"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "A cat."}]
    assert a.conversation == b.conversation == expected
    assert a.images == [image]


def test_chat_without_image_file_is_text_only_and_extra_fields_go_to_meta():
    rows = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "id": 7}
    sample = parse_sample("chat", raw(json=json.dumps(rows).encode()))
    assert sample.images == [] and sample.meta["id"] == 7


def test_chat_image_without_marker_gets_marker_before_first_user_turn():
    rows = {"conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "A cat."}]}
    sample = parse_sample("chat", raw(json=json.dumps(rows).encode(), jpg=b"img"))
    assert sample.conversation[0]["content"] == "<image>\nWhat?"


@pytest.mark.parametrize("members, reason", [
    ({"json": b"{\"conversations\": [}"}, "invalid json"),
    ({"json": b"\xff\xfe{}"}, "non-utf8 text"),
    ({"json": json.dumps({"conversations": [{"from": "human", "value": "<image>\nQ"},
                                            {"from": "gpt", "value": "A"}]}).encode()}, "missing image"),
    ({"json": json.dumps({"conversations": [{"from": "robot", "value": "Q"}]}).encode()}, "invalid conversation"),
    ({"json": json.dumps({"other": 1}).encode()}, "missing conversation"),
    ({"png": b"x"}, "missing conversation"),
])
def test_malformed_chat_samples_raise_bad_sample_with_reason(members, reason):
    with pytest.raises(BadSample) as info:
        parse_sample("chat", raw(**members))
    assert info.value.reason == reason


def test_text_sample_keeps_text_verbatim_and_refuses_empty_or_non_utf8():
    assert parse_sample("text", raw(txt="héllo\n".encode())).text == "héllo\n"
    for members, reason in (({"txt": b" \n"}, "empty text"), ({"txt": b"\x80abc"}, "non-utf8 text"), ({}, "missing text")):
        with pytest.raises(BadSample) as info:
            parse_sample("text", raw(**members))
        assert info.value.reason == reason


def test_unknown_kind_is_a_usage_error_not_a_bad_sample():
    with pytest.raises(ValueError, match="unknown sample kind") as info:
        parse_sample("audio", raw(txt=b"x"))
    assert not isinstance(info.value, BadSample)
