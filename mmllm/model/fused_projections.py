"""Fewer, larger matrix products for inference: each attention's q, k and v projections become one linear layer, and
each MLP's gate and up projections another, so a decode step runs 4 products per layer instead of 7 (each product
at batch 1 reads its weights once; fewer, larger ones spend less on per-call overhead).

`fuse_projections(model.lm)` is applied by `mmllm.load` before quantisation (a fused layer is quantised as one). The
separate layers are removed (no weight is held twice), so a fused model's state dict no longer has the Llama names:
it is for running, not for saving; training, LoRA and export work on unfused models. Layers already quantised
(a folder written by `export --quantize`) stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn


def _concatenated(layers: list[nn.Linear]) -> nn.Linear:
    """One linear whose outputs are the layers' outputs side by side: weight (sum of outs, in)."""
    first = layers[0]
    bias = first.bias is not None
    fused = nn.Linear(first.in_features, sum(layer.out_features for layer in layers), bias=bias,
                      device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([layer.weight for layer in layers]))
        if bias:
            fused.bias.copy_(torch.cat([layer.bias for layer in layers]))
    fused.requires_grad_(False)
    return fused


def _plain(*layers: nn.Module) -> bool:
    return all(type(layer) is nn.Linear for layer in layers)


def fuse_projections(lm: nn.Module) -> int:
    """Fuse q/k/v and gate/up of every decoder layer of a LanguageModel, in place; the number of layers fused."""
    fused = 0
    for layer in lm.layers:
        attention, mlp = layer.self_attn, layer.mlp
        if attention.qkv_proj is None and _plain(attention.q_proj, attention.k_proj, attention.v_proj):
            parts = [attention.q_proj, attention.k_proj, attention.v_proj]
            attention.qkv_proj = _concatenated(parts)
            attention.qkv_sizes = [part.out_features for part in parts]
            del attention.q_proj, attention.k_proj, attention.v_proj
            fused += 1
        if mlp.gate_up_proj is None and _plain(mlp.gate_proj, mlp.up_proj):
            mlp.gate_up_proj = _concatenated([mlp.gate_proj, mlp.up_proj])
            del mlp.gate_proj, mlp.up_proj
    return fused
