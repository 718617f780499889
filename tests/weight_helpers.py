"""Helpers for the weight tests: tiny random Hugging Face folders (transformers) and tiny VLM configs."""

from __future__ import annotations

import pytest
import torch

from mmllm.config import LMConfig, VisionConfig, VLMConfig


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter with N(0, std) noise (norm scales around 1), so no weight is at its init value.

    A checkpoint at its default init (unit norms, zero biases) would let a mis-mapped norm or bias pass.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * std
            is_norm_scale = param.ndim == 1 and "norm" in name and name.endswith("weight")
            param.copy_(1.0 + noise if is_norm_scale else noise)
    return module


def tiny_vlm_config(lm: LMConfig | None = None, vision: VisionConfig | None = None, **fields) -> VLMConfig:
    """A VLM config of a handful of dimensions (32 px images, 4 image tokens)."""
    return VLMConfig(
        lm=lm or LMConfig(vocab_size=300, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, max_seq_len=64),
        vision=vision or VisionConfig(image_size=32, patch_size=8, dim=32, n_layers=2, n_heads=4, mlp_dim=64),
        pixel_shuffle=2,
        **fields,
    )


def save_hf_llama(folder, *, tie: bool, qwen2: bool = False, vocab_size: int = 290, max_shard_size=None):
    """A random tiny transformers LlamaForCausalLM (GQA: 4 query heads, 2 kv heads) saved as safetensors.

    qwen2=True saves a Qwen2ForCausalLM instead: the same layout plus q/k/v biases.
    """
    transformers = pytest.importorskip("transformers")
    config_class, model_class = (
        (transformers.Qwen2Config, transformers.Qwen2ForCausalLM) if qwen2
        else (transformers.LlamaConfig, transformers.LlamaForCausalLM)
    )
    config = config_class(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=tie,
        rope_theta=500.0,
    )
    model = randomize_(model_class(config), seed=1).eval()
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(folder, **kwargs)
    return model


def save_hf_siglip(folder, *, full_model: bool = False, hidden_act: str = "gelu_pytorch_tanh"):
    """A random tiny SigLIP vision tower (32 px, patch 8), or a full SiglipModel with a text tower, saved."""
    transformers = pytest.importorskip("transformers")
    vision = dict(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, layer_norm_eps=1e-6, hidden_act=hidden_act,
    )
    if full_model:
        text = dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                    bos_token_id=0, eos_token_id=1, pad_token_id=1)
        model = transformers.SiglipModel(transformers.SiglipConfig(vision_config=vision, text_config=text))
    else:
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vision))
    randomize_(model, seed=2).eval()
    model.save_pretrained(folder)
    return model
