"""Scaled dot-product attention that keeps CPU mixed-precision training off torch's slow bf16 attention backward.

Under bf16 autocast on a CPU, torch's flash-attention backward in bf16 is several times slower than in float32: on
the shapes demo's step (2-core Xeon with AMX, torch 2.14) the six attention calls took 142 ms of backward in bf16
against 23 ms in float32, more than every matmul of the step together. Attention's own matmuls are small
(head_dim 32-64), so float32 costs little there, while the projections around it keep bf16's speed. Inference
(no autocast, or no gradient) is left as it is: the forward kernel is as fast in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **options) -> torch.Tensor:
    """F.scaled_dot_product_attention, in float32 when training under CPU autocast; the result in q's dtype."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **options)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **options)
