"""Document masking for packed rows with flex_attention: the rule of build_attention_mask as a BlockMask.

A packed row holds several samples; a dense (B, 1, T, T) boolean mask spends T^2 bytes per row and makes SDPA
compute every query-key pair, even the ones between samples. flex_attention takes the rule as a function of
(batch, head, query, key) and a BlockMask (which 128 x 128 tiles hold any allowed pair), so tiles between
samples are skipped and no T x T tensor exists. The rule is the same as the dense mask's (mmllm.model.vlm):
the key is a real token of the query's segment and comes no later than the query, or both are prefix
positions; every position sees itself.

`model.packed_attention: flex` turns it on for training batches with packing or prefix masks; without them the
causal fast path of SDPA is already exact. flex_attention is compiled on accelerators (its fused kernel); on a
CPU it runs torch's unfused reference (forward only: torch has no flex_attention backward on CPUs, so a CPU fit
with it is refused), which serves to test the mask against the dense one.
"""

from __future__ import annotations

import torch

KERNELS = ("dense", "flex")


def document_block_mask(seq_len: int, attention_mask: torch.Tensor | None, segment_ids: torch.Tensor | None,
                        prefix_mask: torch.Tensor | None, device: torch.device, compiled: bool | None = None):
    """The BlockMask of build_attention_mask's rule for (B, T) rows, or None when plain causal attention is exact.

    compiled (default: off a CPU): build it through torch.compile, tile by tile. Uncompiled, torch evaluates the
    rule over every (query, key) pair with vmap, with int64 intermediates: a (B, 1, T, T) tensor and more, the
    very thing the block mask is meant to avoid (bench/block_mask_memory.py measures both)."""
    from torch.nn.attention.flex_attention import create_block_mask

    if segment_ids is None and prefix_mask is None and attention_mask is None:
        return None
    reference = next(t for t in (segment_ids, attention_mask, prefix_mask) if t is not None)
    batch = reference.size(0)
    real = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
    if attention_mask is not None:
        real &= attention_mask.bool()
    if segment_ids is not None:
        real &= segment_ids > 0
    segment = segment_ids if segment_ids is not None else torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    prefix = prefix_mask.bool() if prefix_mask is not None else torch.zeros(batch, seq_len, dtype=torch.bool,
                                                                            device=device)

    def allowed(b, h, q, k):
        visible = (k <= q) | (prefix[b, q] & prefix[b, k])
        return ((segment[b, q] == segment[b, k]) & real[b, k] & visible) | (q == k)

    if compiled is None:
        compiled = torch.device(device).type != "cpu"
    return create_block_mask(allowed, batch, None, seq_len, seq_len, device=device, _compile=compiled)


def check_trainable(kernel: str, device: torch.device) -> None:
    """ValueError when `kernel` cannot train on `device` (torch has no flex_attention backward on CPUs)."""
    if kernel == "flex" and torch.device(device).type == "cpu":
        raise ValueError("model.packed_attention flex needs a GPU: torch has no flex_attention backward on CPUs "
                         "(use dense there)")


_COMPILED = {}


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
    """flex_attention with grouped-query heads: q (B, nh, T, hd), k/v (B, n_kv, T, hd) -> (B, nh, T, hd)."""
    from torch.nn.attention.flex_attention import flex_attention

    function = flex_attention
    if q.device.type != "cpu":  # the fused kernel; compiled once per device type, for every row length (dynamic
        # shapes: a prefix-masked batch's length varies from batch to batch, and each length would compile anew)
        function = _COMPILED.setdefault(q.device.type, torch.compile(flex_attention, dynamic=True))
    return function(q, k, v, block_mask=block_mask, enable_gqa=q.size(1) != k.size(1))
