"""q/k/v and gate/up fused into one linear each (mmllm.model.fused_projections): the same logits as the separate
layers, with and without attention biases, no weight held twice; quantised after fusing, the same greedy tokens
as quantised unfused (int4's groups run along the inputs, which fusing leaves alone)."""

from __future__ import annotations

import copy

import pytest
import torch

from mmllm.compress.quantization import quantize
from mmllm.model.fused_projections import fuse_projections
from mmllm.model.generation import generate


@pytest.mark.parametrize("bias", [False, True])
def test_fused_projections_give_the_logits_of_the_separate_layers(make_model, make_prompt, make_images, bias):
    model = make_model(attention_bias=bias)
    fused = copy.deepcopy(model)
    assert fuse_projections(fused.lm) == model.config.lm.n_layers
    names = [name for name, _ in fused.lm.named_parameters()]
    separate = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
    assert not any(separate & set(name.split(".")) for name in names)
    assert any("qkv_proj" in name for name in names) and any("gate_up_proj" in name for name in names)
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in model.parameters())
    ids, pixels = make_prompt(model, 10, n_images=1), make_images(1)
    with torch.no_grad():
        torch.testing.assert_close(fused(ids[None], pixel_values=pixels).logits,
                                   model(ids[None], pixel_values=pixels).logits, rtol=1e-5, atol=1e-5)
    assert fuse_projections(fused.lm) == 0  # fusing again changes nothing


def test_int4_after_fusing_decodes_the_tokens_of_int4_unfused(make_model, make_prompt, make_images):
    model = make_model(seed=1)
    fused = copy.deepcopy(model)
    fuse_projections(fused.lm)
    quantize(model, 4, "torch-packed-int4")
    quantize(fused, 4, "torch-packed-int4")
    ids, pixels = make_prompt(model, 10, n_images=1), make_images(1)
    assert generate(fused, ids[None], pixel_values=pixels, max_new_tokens=8, stop_ids=[]) == \
        generate(model, ids[None], pixel_values=pixels, max_new_tokens=8, stop_ids=[])
