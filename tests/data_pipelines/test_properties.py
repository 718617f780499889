"""Property tests of the parsers users feed: any input gives a result or the documented error, never another
exception. Chat JSON (LLaVA and OpenAI forms) -> ValueError / BadSample; a model folder's config.json ->
UsageError; a training source entry -> ValueError."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_pipelines.chat.conversation import normalise_conversation
from data_pipelines.read.loader import Source
from data_pipelines.read.shards import BadSample, parse_sample
from mmllm.config import VLMConfig
from mmllm.errors import UsageError
from mmllm.formats.model_folder import FORMAT_VERSION, read_model_config

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20)

# Near-valid rows: the keys and values real files use, mixed with wrong types.
role_names = st.sampled_from(["human", "gpt", "system", "user", "assistant", "USER", "Gpt", "tool", "", "bot"])
texts = st.sampled_from(["<image>\nWhat is it?", "A cat.", "<image>", "", "two <image> <image>", "hi"]) | st.text(
    max_size=20)
parts = st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "image_url", "audio", 3])},
                              optional={"text": texts | scalars}) | scalars
contents = texts | st.lists(parts, max_size=3) | scalars
rows = (st.fixed_dictionaries({"from": role_names | scalars}, optional={"value": contents})
        | st.fixed_dictionaries({"role": role_names | scalars}, optional={"content": contents}) | json_values)
conversations = st.lists(rows, max_size=5)
chat_documents = (st.fixed_dictionaries({}, optional={"conversations": conversations | json_values,
                                                      "messages": conversations | json_values,
                                                      "id": scalars, "questions": json_values})
                  | json_values)


@SETTINGS
@given(conversations | json_values)
def test_conversation_normalisation_gives_turns_or_a_value_error(value):
    try:
        turns = normalise_conversation(value)
    except ValueError:
        return
    assert isinstance(turns, list)
    for turn in turns:
        assert set(turn) == {"role", "content"}
        assert turn["role"] in ("user", "assistant", "system") and isinstance(turn["content"], str)


@SETTINGS
@given(chat_documents, st.booleans())
def test_a_chat_shard_sample_parses_or_is_a_counted_bad_sample(document, with_image):
    raw = {"__key__": "k", "__url__": "shard.tar", "json": json.dumps(document).encode()}
    if with_image:
        raw["jpg"] = b"\xff\xd8 not decoded here"
    try:
        sample = parse_sample("chat", raw)
    except BadSample as error:
        assert error.reason  # counted under a short reason
        return
    assert sample.kind == "chat" and all(isinstance(t["content"], str) for t in sample.conversation)
    markers = sum(t["content"].count("<image>") for t in sample.conversation)
    assert markers == len(sample.images)  # what the processor requires of every parsed chat


@SETTINGS
@given(st.binary(max_size=64))
def test_chat_json_bytes_that_are_not_json_are_bad_samples(data):
    try:
        sample = parse_sample("chat", {"__key__": "k", "json": data})
    except BadSample as error:
        assert error.reason in ("invalid json", "non-utf8 text", "missing conversation", "invalid conversation")
    else:  # bytes that happen to be a valid chat document
        assert sample.kind == "chat" and sample.conversation


numbers = st.integers(-3, 300) | st.floats(allow_nan=True) | scalars
shape_fields = st.fixed_dictionaries({}, optional={name: numbers for name in (
    "vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "mlp_dim", "max_seq_len", "head_dim", "rope_theta",
    "norm_eps", "image_size", "patch_size", "tie_embeddings", "qk_norm", "bogus")})
config_documents = st.fixed_dictionaries(
    {"format_version": st.sampled_from([FORMAT_VERSION, 0, FORMAT_VERSION + 1, "1", None])},
    optional={"lm": shape_fields | json_values, "vision": shape_fields | json_values,
              "pixel_shuffle": numbers, "attention": st.sampled_from(["causal", "prefix", "full"]) | scalars,
              "image_mean": json_values, "image_std": json_values, "resize": scalars,
              "eos_token_ids": json_values, "image_token_id": numbers, "preset": scalars}) | json_values


@SETTINGS
@given(config_documents)
def test_a_model_folders_config_json_reads_as_a_valid_config_or_a_usage_error(tmp_path_factory, document):
    folder = tmp_path_factory.mktemp("model")
    (folder / "config.json").write_text(json.dumps(document))
    try:
        config = read_model_config(folder)
    except UsageError as error:
        assert str(folder / "config.json") in str(error)
        return
    assert isinstance(config, VLMConfig)
    # Whatever was read is a config a model can be built from: the same checks pass again on its dict.
    assert VLMConfig.from_dict(config.to_dict()) == config
    vision = () if config.vision is None else (config.vision.norm_eps,)  # None: a language model alone
    for value in (config.lm.rope_theta, config.lm.norm_eps, *vision):
        assert isinstance(value, float) and math.isfinite(value) and value > 0


@SETTINGS
@given(st.fixed_dictionaries({}, optional={"kind": st.sampled_from(["caption", "chat", "text", "video"]) | scalars,
                                           "path": st.text(max_size=10) | json_values,
                                           "weight": numbers, "single_turn": numbers, "extra": scalars})
       | json_values)
def test_a_source_entry_is_a_source_or_a_value_error(spec):
    try:
        source = Source.of(spec)
    except ValueError:
        return
    assert source.kind in ("caption", "chat", "text")
    assert math.isfinite(source.weight) and source.weight >= 0 and 0 <= source.single_turn <= 1
    assert isinstance(source.path, str) or all(isinstance(p, str) for p in source.path)
