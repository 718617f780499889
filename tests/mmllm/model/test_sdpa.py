"""Attention under CPU bf16 autocast runs in float32 (mmllm.model.sdpa): the same values and gradients as float32
attention rounded to bf16, and untouched outside training."""

import torch
import torch.nn.functional as F

from mmllm.model.sdpa import scaled_dot_product_attention


def qkv(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 9, 16, generator=generator, requires_grad=True) for _ in range(3)]


def test_under_cpu_autocast_attention_is_float32_with_gradients():
    q, k, v = qkv()
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask)
    assert out.dtype == torch.bfloat16  # the caller's dtype back
    reference = F.scaled_dot_product_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(),
                                                attn_mask=mask)
    torch.testing.assert_close(out, reference.bfloat16(), rtol=0, atol=0)  # float32 attention, rounded once
    out.float().square().sum().backward()
    q2, k2, v2 = qkv()
    F.scaled_dot_product_attention(q2.bfloat16().float(), k2.bfloat16().float(), v2.bfloat16().float(),
                                   attn_mask=mask).bfloat16().float().square().sum().backward()
    for ours, theirs in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-2, atol=1e-2)


def test_without_autocast_or_gradients_it_is_torch_s_own():
    q, k, v = (t.detach().bfloat16() for t in qkv(1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True),
                                   F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=0, atol=0)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v),
                               rtol=0, atol=0)
