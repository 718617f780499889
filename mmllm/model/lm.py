"""The language model: a Llama-style decoder (RMSNorm, rotary GQA attention through SDPA, SwiGLU MLP).

Parameter names follow Hugging Face Llama (`embed_tokens`, `layers.{i}.self_attn.q_proj`, ...) so that
importing a checkpoint is a renaming table. Rotary embeddings use the Llama convention (rotate_half,
non-interleaved halves), so HF q/k weights load without permutation.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from mmllm.config import LMConfig
from mmllm.model.sdpa import scaled_dot_product_attention


class KVCache(Protocol):
    """What attention needs of a key/value cache (mmllm.model.generation's KVCache and StaticKVCache are two)."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k/v (B, n_kv, T, hd) for `layer`; return the keys and values to attend over,
        cached ones first: (B, n_kv, S, hd)."""
        ...

    def advance(self, n: int) -> None:
        """The forward pass wrote n more positions to every layer."""
        ...


# scaled_dot_product_attention learned `enable_gqa` in torch 2.5; older versions get repeated kv heads.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool
) -> torch.Tensor:
    """SDPA with grouped-query attention: q (B, nh, T, hd), k/v (B, n_kv, S, hd) -> (B, nh, T, hd).

    attn_mask is boolean, True where a query may attend a key, broadcastable to (B, 1, T, S), or a flex_attention
    BlockMask (mmllm.model.document_mask: packed rows without a dense mask).
    """
    if attn_mask is not None and not isinstance(attn_mask, torch.Tensor):
        from mmllm.model.document_mask import flex_attend

        return flex_attend(q, k, v, attn_mask)
    if q.size(1) == k.size(1):
        return scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    if _SDPA_HAS_GQA:
        return scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=True)
    group = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 (as Llama does) and cast back."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is one fused kernel where the spelled-out x * rsqrt(mean(x^2) + eps) is five (it matters
        # in decoding, where each op is a few microseconds of dispatch); results are bitwise equal.
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary embeddings at arbitrary position ids (Llama convention).

    inv_freq is recomputed in fp32 on each call (head_dim / 2 numbers): a buffer would be cast to bf16 by
    `model.to(torch.bfloat16)` and lose the precision long positions need.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, sin (B, 1, T, head_dim), ready to broadcast over heads."""
        exponents = torch.arange(0, self.head_dim, 2, device=position_ids.device, dtype=torch.float32)
        inv_freq = 1.0 / (self.theta ** (exponents / self.head_dim))  # (hd/2,)
        freqs = position_ids[:, :, None].float() * inv_freq  # (B, T, hd/2)
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hd): halves, not interleaved
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, hd) rotated by the angles of its positions."""
    return x * cos + rotate_half(x) * sin


class LMAttention(nn.Module):
    """Grouped-query self-attention with rotary embeddings; optionally reads/writes a KV cache."""

    def __init__(self, config: LMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)
        self.qkv_proj: nn.Linear | None = None  # q, k and v as one linear, for inference (fuse_projections)
        # QK-norm bounds the attention logits, so a high learning rate cannot blow them up.
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, n_kv, S, hd): cached keys + these
        y = attend(q, k, v, attn_mask, is_causal)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.mlp_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.mlp_dim, bias=False)
        self.down_proj = nn.Linear(config.mlp_dim, config.dim, bias=False)
        self.gate_up_proj: nn.Linear | None = None  # gate and up as one linear, for inference (fuse_projections)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LMConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = LMAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, cos, sin, attn_mask, is_causal, kv_cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, is_causal, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LanguageModel(nn.Module):
    """Token embedding -> decoder layers -> final RMSNorm; `logits` applies the (maybe tied) LM head."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        # Tied: the head is embed_tokens.weight itself, so no `lm_head.weight` appears in the state dict.
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        self.checkpointing = False  # recompute each block in backward (training only; never with a KV cache)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = True,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """inputs_embeds (B, T, dim), position_ids (B, T) -> final hidden states (B, T, dim).

        attn_mask: bool, True = may attend, broadcastable to (B, 1, T, S) where S counts cached keys too;
        None with is_causal=True is plain causal attention (SDPA's fast path), None with is_causal=False
        lets every query see every key (one decode step without padding).
        """
        cos, sin = self.rotary(position_ids, inputs_embeds.dtype)
        x = inputs_embeds
        checkpointing = self.checkpointing and self.training and kv_cache is None and torch.is_grad_enabled()
        for layer in self.layers:
            if checkpointing:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, attn_mask, is_causal, use_reentrant=False)
            else:
                x = layer(x, cos, sin, attn_mask, is_causal, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(inputs_embeds.size(1))
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., dim) -> logits (..., vocab_size)."""
        if self.lm_head is None:
            return F.linear(hidden, self.embed_tokens.weight)
        return self.lm_head(hidden)

    def init_weights(self, std: float = 0.02) -> None:
        """Normal(0, std) for linears and embeddings, residual projections scaled by 1/sqrt(2 * n_layers)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for layer in self.layers:
            nn.init.normal_(layer.self_attn.o_proj.weight, std=residual_std)
            nn.init.normal_(layer.mlp.down_proj.weight, std=residual_std)
