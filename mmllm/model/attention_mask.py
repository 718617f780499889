"""Who attends to whom: boolean attention masks and default position ids for padding, packing and prefix-LM.

Rule (True = the query may attend the key):
    key is a real token (attention_mask, segment id > 0)
    and query and key are in the same packed segment
    and (key <= query, or both are prefix positions: the PaliGemma-style bidirectional prompt).
Every query also sees itself, so a padding row is never fully masked (SDPA would return NaN there).
"""

from __future__ import annotations

import torch


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row is ones then zeros: causal attention alone then never lets a real token see a pad."""
    mask = attention_mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def build_attention_mask(
    seq_len: int,
    attention_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    prefix_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """(B, 1, T, T) bool mask, or None when plain causal attention is exact (SDPA's is_causal fast path).

    None is returned without padding, packing or prefix, and also for right padding: there causal attention
    already hides the trailing pads from every real token (only the unused outputs at pads differ).
    """
    if segment_ids is None and prefix_mask is None:
        if attention_mask is None or is_right_padded(attention_mask):
            return None
    device = next(t.device for t in (attention_mask, segment_ids, prefix_mask) if t is not None)
    positions = torch.arange(seq_len, device=device)
    allowed = (positions[None, :] <= positions[:, None])[None]  # (1, T, T): key <= query
    if prefix_mask is not None:
        prefix = prefix_mask.bool()
        allowed = allowed | (prefix[:, :, None] & prefix[:, None, :])  # prompt sees the whole prompt
    key_is_real = None
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])  # never across samples
        key_is_real = segment_ids > 0
    if attention_mask is not None:
        real = attention_mask.bool()
        key_is_real = real if key_is_real is None else key_is_real & real
    if key_is_real is not None:
        allowed = allowed & key_is_real[:, None, :]
    allowed = allowed | torch.eye(seq_len, dtype=torch.bool, device=device)
    return allowed[:, None]  # (B, 1, T, T)


def default_position_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T) rotary positions: restarting at 0 in each packed segment, else counting real tokens only
    (cumsum(attention_mask) - 1, clamped at 0, which is what left-padded generation needs)."""
    B, T = input_ids.shape
    index = torch.arange(T, device=input_ids.device).expand(B, T)
    if segment_ids is not None:
        starts = torch.ones_like(segment_ids, dtype=torch.bool)
        starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        segment_start = torch.where(starts, index, 0).cummax(dim=1).values  # index where each segment began
        return index - segment_start
    if attention_mask is not None:
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return index
