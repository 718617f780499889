"""How much each sample's tokens weigh in the training loss: per token, per sample, or per square root of length.

A mean over tokens ("token", the default) lets a 24-token caption outweigh a one-word answer 24 to 1, so a batch
that mixes captions and short VQA answers mostly trains captioning. "sample" gives every sample (every packed
segment) the same total weight, so one answer counts as much as one caption; "sqrt" sits between the two, each
token weighing 1 / sqrt(its sample's supervised tokens) (InternVL's `len2weight`).
"""

from __future__ import annotations

from typing import Literal

import torch

LossWeighting = Literal["token", "sample", "sqrt"]


def weighted_loss(token_losses: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor | None,
                  weighting: LossWeighting) -> torch.Tensor:
    """The batch's loss, each supervised token weighted by its sample's rule, over the sum of the weights.

    token_losses: (B, T-1) from VLM.forward (loss of predicting token t+1 at t, 0 where unsupervised); labels
    (B, T), -100 where unsupervised; segment_ids (B, T) 1..k per packed sample, 0 on padding, or None (one sample
    per row).
    """
    supervised = labels[:, 1:] != -100  # (B, T-1): the targets of the positions
    if weighting == "token":
        return (token_losses * supervised).sum() / supervised.sum().clamp(min=1)
    if weighting not in ("sample", "sqrt"):
        raise ValueError(f"unknown loss weighting {weighting!r}; choose token, sample or sqrt")
    B, positions = supervised.shape
    if segment_ids is None:
        sample = torch.arange(B, device=labels.device)[:, None].expand(B, positions)
    else:  # a target belongs to the packed segment of the token it is
        width = segment_ids.size(1) + 1  # segment ids never exceed the row length (no host read of the max)
        sample = torch.arange(B, device=labels.device)[:, None] * width + segment_ids[:, 1:]
    sample = sample[supervised]  # (S,) the sample of each supervised target
    lengths = torch.bincount(sample).float()  # supervised targets per sample id
    per_token = lengths[sample]  # (S,)
    weights = 1.0 / per_token if weighting == "sample" else per_token.rsqrt()
    return (token_losses[supervised] * weights).sum() / weights.sum().clamp(min=1e-12)
