"""Importing Hugging Face Llama and SigLIP checkpoints gives the same outputs as transformers on the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from weight_helpers import save_hf_llama, save_hf_siglip, tiny_vlm_config

from mmllm.formats import hf_llama as hf_import
from mmllm.errors import UsageError
from mmllm.model import VLM
from mmllm.formats.model_folder import load_weights_strict


def lm_from_hf(folder):
    """Our VLM with the LM of a Hugging Face folder loaded (vision and projector stay random)."""
    lm_config, weights = hf_import.load_hf_lm(folder)
    model = VLM(tiny_vlm_config(lm=lm_config)).eval()
    load_weights_strict(model.lm, {name.removeprefix("lm."): t for name, t in weights.items()}, str(folder))
    return model


@pytest.mark.parametrize(
    "tie, qwen2, max_shard_size",
    [(True, False, None), (False, False, None), (True, True, None), (True, False, "20KB"), (False, False, "20KB")],
    ids=["tied", "untied", "qwen2-qkv-bias", "tied-sharded", "untied-sharded"],
)
def test_llama_import_logits_match_transformers(tmp_path, tie, qwen2, max_shard_size):
    hf_model = save_hf_llama(tmp_path, tie=tie, qwen2=qwen2, max_shard_size=max_shard_size)
    if max_shard_size:
        assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2
    model = lm_from_hf(tmp_path)
    assert model.config.lm.rope_theta == 500.0 and model.config.lm.n_kv_heads == 2
    assert (model.lm.lm_head is None) == tie
    input_ids = torch.randint(0, 290, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf_model(input_ids=input_ids).logits
        actual = model(input_ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_llama_import_left_padded_batch_matches_transformers(tmp_path):
    hf_model = save_hf_llama(tmp_path, tie=True)
    model = lm_from_hf(tmp_path)
    input_ids = torch.randint(3, 290, (2, 9), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # sample 0 is left-padded by 3
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        actual = model(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(actual[real], expected[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "full_model, hidden_act", [(False, "gelu_pytorch_tanh"), (True, "gelu_pytorch_tanh"), (False, "gelu")]
)
def test_siglip_import_hidden_states_match_transformers(tmp_path, full_model, hidden_act):
    hf_model = save_hf_siglip(tmp_path, full_model=full_model, hidden_act=hidden_act)
    vision_config, weights = hf_import.load_hf_vision(tmp_path)
    assert not any("head" in name or "text" in name for name in weights)  # pooling head and text tower dropped
    model = VLM(tiny_vlm_config(vision=vision_config)).eval()
    load_weights_strict(model.vision, {n.removeprefix("vision."): t for n, t in weights.items()}, str(tmp_path))
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    hf_vision = hf_model.vision_model if full_model else hf_model
    with torch.no_grad():
        expected = hf_vision(pixel_values=pixel_values).last_hidden_state  # after post_layernorm
        actual = model.vision(pixel_values)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_sharded_and_single_file_checkpoints_import_the_same_tensors(tmp_path):
    save_hf_llama(tmp_path / "single", tie=False)
    save_hf_llama(tmp_path / "sharded", tie=False, max_shard_size="20KB")
    _, single = hf_import.load_hf_lm(tmp_path / "single")
    _, sharded = hf_import.load_hf_lm(tmp_path / "sharded")
    assert single.keys() == sharded.keys()
    for name in single:
        assert torch.equal(single[name], sharded[name]), name


def test_missing_shard_error_names_the_shard(tmp_path):
    save_hf_llama(tmp_path, tie=True, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(UsageError, match=shard.name):
        hf_import.load_hf_lm(tmp_path)


def test_folder_without_safetensors_is_a_usage_error(tmp_path):
    save_hf_llama(tmp_path, tie=True)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UsageError, match="model.safetensors"):
        hf_import.load_hf_lm(tmp_path)


def test_weights_that_contradict_config_json_name_the_tensor(tmp_path):
    save_hf_llama(tmp_path, tie=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 48  # the checkpoint's MLP is 64 wide
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"mlp\.gate_proj\.weight has shape \(64, 32\).*\(48, 32\)"):
        hf_import.load_hf_lm(tmp_path)


LLAMA_V4_CONFIG = {  # the transformers 4.x layout: rope_theta and rope_scaling at the top level (SmolLM2)
    "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536, "rms_norm_eps": 1e-5,
    "rope_theta": 100000, "rope_scaling": None, "max_position_embeddings": 8192, "tie_word_embeddings": True,
    "hidden_act": "silu", "attention_bias": False,
}


def test_lm_config_reads_transformers_4_layout():
    config = hf_import.lm_config_from_hf(LLAMA_V4_CONFIG)
    assert (config.vocab_size, config.dim, config.n_layers, config.n_heads, config.n_kv_heads) == (49152, 576, 30, 9, 3)
    assert (config.mlp_dim, config.head_dim, config.max_seq_len) == (1536, 64, 8192)
    assert config.rope_theta == 100000.0 and config.norm_eps == 1e-5 and config.tie_embeddings


@pytest.mark.parametrize(
    "rope_fields",
    [{"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, {"rope_scaling": {"type": "linear", "factor": 2.0}},
     {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}}],
)
def test_unsupported_rope_scaling_is_refused(rope_fields):
    with pytest.raises(UsageError, match="rope scaling"):
        hf_import.lm_config_from_hf({**LLAMA_V4_CONFIG, **rope_fields})


def test_llama_attention_bias_is_refused_because_it_biases_o_proj():
    with pytest.raises(UsageError, match="o_proj"):
        hf_import.lm_config_from_hf({**LLAMA_V4_CONFIG, "attention_bias": True})


def test_checkpoint_tensor_without_a_place_in_the_model_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    save_hf_llama(tmp_path, tie=True)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(UsageError, match=r"no place for: model\.layers\.0\.self_attn\.o_proj\.bias"):
        hf_import.load_hf_lm(tmp_path)


def test_non_llama_lm_is_refused():
    with pytest.raises(UsageError, match="gpt2"):
        hf_import.lm_config_from_hf({**LLAMA_V4_CONFIG, "model_type": "gpt2"})


def test_vision_config_reads_full_siglip_and_vision_only_layouts():
    vision = {"model_type": "siglip_vision_model", "image_size": 384, "patch_size": 16, "hidden_size": 768,
              "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
              "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"}
    from_vision = hf_import.vision_config_from_hf(vision)
    from_full = hf_import.vision_config_from_hf({"model_type": "siglip", "vision_config": vision, "text_config": {}})
    assert from_vision == from_full
    assert (from_vision.grid_size, from_vision.dim, from_vision.activation) == (24, 768, "gelu_tanh")


def test_resize_vocab_appends_mean_rows_to_embedding_and_untied_head():
    weights = {"lm.embed_tokens.weight": torch.randn(5, 4), "lm.lm_head.weight": torch.randn(5, 4),
               "lm.norm.weight": torch.ones(4)}
    resized = hf_import.resize_vocab(weights, 8)
    for name in ("lm.embed_tokens.weight", "lm.lm_head.weight"):
        assert resized[name].shape == (8, 4)
        assert torch.equal(resized[name][:5], weights[name])
        torch.testing.assert_close(resized[name][5:], weights[name].mean(0).expand(3, 4))
    assert resized["lm.norm.weight"] is weights["lm.norm.weight"]

