"""Our LM and ViT against Hugging Face transformers (test-only dependency) with the same weights.

Loading is a plain prefix renaming, which also pins the parameter names the importer relies on.
"""

from __future__ import annotations

import pytest
import torch

from mmllm.config import LMConfig, VisionConfig
from mmllm.model import LanguageModel, VisionEncoder

transformers = pytest.importorskip("transformers")


def randomize(module: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.2)


def load_renamed(ours: torch.nn.Module, theirs: torch.nn.Module, prefix: str, tied: bool = False) -> None:
    """Copy `theirs` into `ours`: names equal after removing `prefix` (strict: every key on both sides).

    A tied HF model still lists `lm_head.weight` (the embedding itself); ours has no such key then.
    """
    renamed = {name.removeprefix(prefix): value for name, value in theirs.state_dict().items()}
    if tied:
        del renamed["lm_head.weight"]
    ours.load_state_dict(renamed, strict=True)


@pytest.mark.parametrize(
    "family, tie, bias",
    [("llama", True, False), ("llama", False, False), ("qwen2", True, True)],
)
def test_lm_logits_match_transformers(family, tie, bias):
    config = LMConfig(
        vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64,
        rope_theta=5000.0, norm_eps=1e-5, tie_embeddings=tie, attention_bias=bias,
    )
    hf_config_class = transformers.LlamaConfig if family == "llama" else transformers.Qwen2Config
    hf_model_class = transformers.LlamaForCausalLM if family == "llama" else transformers.Qwen2ForCausalLM
    hf_config = hf_config_class(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie,
        max_position_embeddings=128,
    )
    hf_config._attn_implementation = "eager"
    theirs = hf_model_class(hf_config).eval()
    randomize(theirs, seed=1)
    ours = LanguageModel(config).eval()
    load_renamed(ours, theirs, "model.", tied=tie)
    input_ids = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(20).expand(2, 20)
    with torch.no_grad():
        expected = theirs(input_ids).logits
        actual = ours.logits(ours(ours.embed_tokens(input_ids), positions))
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("image_size", [32, 48])
def test_vision_features_match_transformers_siglip(image_size):
    """At the configured size and, with bicubic position interpolation, at another one."""
    config = VisionConfig(image_size=32, patch_size=8, dim=24, n_layers=2, n_heads=2, mlp_dim=48)
    hf_config = transformers.SiglipVisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", vision_use_head=False,
    )
    hf_config._attn_implementation = "eager"
    theirs = transformers.SiglipVisionModel(hf_config).eval()
    randomize(theirs, seed=2)
    ours = VisionEncoder(config).eval()
    load_renamed(ours, theirs, "vision_model.")
    pixel_values = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(pixel_values, interpolate_pos_encoding=image_size != 32).last_hidden_state
        actual = ours(pixel_values)
    assert actual.shape == (2, (image_size // 8) ** 2, 24)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
