"""A model folder round-trips exactly, loads without unpickling, and names the file when something is wrong."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from weight_helpers import randomize_, tiny_vlm_config

from mmllm.config import LMConfig
from mmllm.errors import UsageError
from mmllm.formats.model_folder import load_model_folder, save_model_folder
from mmllm.model import VLM


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file):
    from data_pipelines.chat.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_file)[0]


def tiny_model(tokenizer, tie: bool = True, qk_norm: bool = False) -> VLM:
    from data_pipelines.chat.special_tokens import TokenIds
    from data_pipelines.chat.tokenizer import vocab_size

    ids = TokenIds.from_tokenizer(tokenizer)
    lm = LMConfig(vocab_size=300, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, max_seq_len=64,
                  tie_embeddings=tie, qk_norm=qk_norm)
    config = tiny_vlm_config(lm=lm).with_tokenizer_ids(vocab_size(tokenizer), ids.image, ids.pad, ids.eos_ids)
    return randomize_(VLM(config), seed=3).eval()


def image_batch(config):
    """Two samples, the first with one image, as the model expects them."""
    n = config.tokens_per_image
    input_ids = torch.tensor([[10, 11] + [config.image_token_id] * n + [12, 13], [14, 15, 16, 17] + [18] * n])
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return dict(input_ids=input_ids, pixel_values=pixel_values, image_counts=torch.tensor([1, 0]))


@pytest.mark.parametrize("tie,qk_norm", [(True, False), (False, False), (True, True)],
                         ids=["tied", "untied", "qk_norm"])
def test_round_trip_gives_identical_state_dict_and_logits(tmp_path, tokenizer, tie, qk_norm):
    model = tiny_model(tokenizer, tie=tie, qk_norm=qk_norm)
    save_model_folder(model, tokenizer, tmp_path)
    loaded, loaded_tokenizer, config = load_model_folder(tmp_path)
    assert config == model.config
    assert loaded_tokenizer.to_str() == tokenizer.to_str()
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert qk_norm == ("lm.layers.0.self_attn.q_norm.weight" in actual)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    batch = image_batch(config)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_folder_holds_three_files_and_tied_head_is_stored_once(tmp_path, tokenizer, tie):
    save_model_folder(tiny_model(tokenizer, tie=tie), tokenizer, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as file:
        names = set(file.keys())
    assert "lm.embed_tokens.weight" in names
    assert ("lm.lm_head.weight" in names) == (not tie)


def test_bfloat16_model_round_trips_in_bfloat16(tmp_path, tokenizer):
    model = tiny_model(tokenizer).to(torch.bfloat16)
    save_model_folder(model, tokenizer, tmp_path)
    loaded, _, _ = load_model_folder(tmp_path)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    loaded32, _, _ = load_model_folder(tmp_path, dtype=torch.float32)
    assert loaded32.lm.norm.weight.dtype == torch.float32


def test_loading_never_unpickles(tmp_path, tokenizer, monkeypatch):
    save_model_folder(tiny_model(tokenizer), tokenizer, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a model folder must load without pickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_model_folder(tmp_path)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_error_names_the_file(tmp_path, tokenizer, missing):
    save_model_folder(tiny_model(tokenizer), tokenizer, tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(UsageError, match=missing.replace(".", r"\.")):
        load_model_folder(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors_error_names_the_file(tmp_path, tokenizer, damage):
    save_model_folder(tiny_model(tokenizer), tokenizer, tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not safetensors" * 64, "empty": b""}[damage])
    with pytest.raises(UsageError, match=r"model\.safetensors"):
        load_model_folder(tmp_path)


def test_key_mismatch_lists_missing_and_unexpected_names(tmp_path, tokenizer):
    save_model_folder(tiny_model(tokenizer), tokenizer, tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    tensors["lm.layers.0.mlp.extra.weight"] = tensors.pop("lm.layers.1.mlp.up_proj.weight")
    save_file(tensors, path)
    with pytest.raises(UsageError) as error:
        load_model_folder(tmp_path)
    message = str(error.value)
    assert "missing: lm.layers.1.mlp.up_proj.weight" in message
    assert "unexpected: lm.layers.0.mlp.extra.weight" in message


def test_wrong_shape_is_reported_with_both_shapes(tmp_path, tokenizer):
    save_model_folder(tiny_model(tokenizer), tokenizer, tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    tensors["lm.norm.weight"] = torch.ones(33)
    save_file(tensors, path)
    with pytest.raises(UsageError, match=r"wrong shape: lm\.norm\.weight \(33,\) != \(32,\)"):
        load_model_folder(tmp_path)


def test_hugging_face_folder_is_refused_with_a_hint(tmp_path, tokenizer):
    save_model_folder(tiny_model(tokenizer), tokenizer, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    with pytest.raises(UsageError, match="mmllm build"):
        load_model_folder(tmp_path)


def test_config_from_a_newer_format_is_refused(tmp_path, tokenizer):
    save_model_folder(tiny_model(tokenizer), tokenizer, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["format_version"] += 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="format version"):
        load_model_folder(tmp_path)


def test_tokenizer_with_another_image_token_id_is_refused(tmp_path, tokenizer):
    model = tiny_model(tokenizer)
    model.config.image_token_id += 1
    save_model_folder(model, tokenizer, tmp_path)
    with pytest.raises(UsageError, match="image_token_id"):
        load_model_folder(tmp_path)


def test_building_without_init_leaves_other_threads_initialising():
    """uninitialised() idles torch.nn.init in its own thread only: a layer built meanwhile in another thread
    (serve answering while a model loads, tests in threads) gets the weights torch would draw for it."""
    import threading

    from mmllm.formats.model_folder import uninitialised

    torch.manual_seed(0)
    expected = torch.nn.Linear(64, 64).weight.detach().clone()
    inside, built = threading.Event(), threading.Event()

    def hold_uninitialised():
        with uninitialised():
            inside.set()
            built.wait(10)

    holder = threading.Thread(target=hold_uninitialised)
    holder.start()
    assert inside.wait(10)
    try:
        torch.manual_seed(0)
        other = torch.nn.Linear(64, 64).weight.detach().clone()  # this thread is outside uninitialised()
    finally:
        built.set()
        holder.join()
    torch.testing.assert_close(other, expected, rtol=0, atol=0)

    with uninitialised():  # inside, in its own thread, nothing is drawn: the generator has not moved
        torch.manual_seed(0)
        torch.nn.Linear(64, 64)
        after_build = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after_build, torch.rand(4))
