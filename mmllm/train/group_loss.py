"""Losses that weigh groups of samples: inverse-frequency reweighting (`data.balance: {mode: reweight}`) and group
DRO (`model.group_dro`, Sagawa et al. 2020, "Distributionally Robust Neural Networks for Group Shifts").

Both read each row's group from the batch (`groups`, carried by the data stream, data_pipelines.balance) and work
on the per-token losses the model returns, one sample per row (no packing).

Group DRO keeps a distribution q over the groups and, at each step, moves it toward the groups whose loss is
highest: q_g <- q_g * exp(step_size * loss_g), normalised; the loss trained on is sum_g q_g * loss_g, loss_g being
the mean token loss of group g's rows in the batch (0 for a group absent from it, whose q is left unchanged before
normalising): their `compute_robust_loss` (github.com/kohpangwei/group_DRO, loss.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GroupDRO:
    """Group DRO: the loss weighs the worst groups up, online.

    Args:
        by: the field whose values are the groups (as data.balance.by: a key of the sample's JSON, `answer`, or a
            field of its `questions` entries); samples without it form the group `(none)`.
        step_size: the step of the exponentiated-gradient update of the group weights (Sagawa et al.'s eta).
    """

    by: str
    step_size: float = 0.01

    def __post_init__(self) -> None:
        if not isinstance(self.by, str) or not self.by.strip():
            raise ValueError("model.group_dro.by names a field of the samples, e.g. `group` or `answer`")
        if not self.step_size > 0:
            raise ValueError(f"model.group_dro.step_size must be above 0, got {self.step_size}")


def row_losses(token_losses: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) summed loss of each row's supervised targets, (B,) their count. token_losses (B, T-1) aligned with
    labels[:, 1:], -100 where unsupervised."""
    supervised = (labels[:, 1:] != -100).to(token_losses.dtype)
    return (token_losses * supervised).sum(dim=1), supervised.sum(dim=1)


def group_indices(groups: list, names: dict[str, int], device) -> torch.Tensor:
    """(B,) each row's index in `names`, a group never seen before added at the end."""
    for group in groups:
        names.setdefault(group, len(names))
    return torch.tensor([names[group] for group in groups], dtype=torch.long, device=device)


def reweighted_loss(token_losses: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:
    """The token mean with each row's tokens weighted by its row weight: sum w_b l_bt / sum w_b n_b."""
    sums, counts = row_losses(token_losses, labels)
    return (row_weights * sums).sum() / (row_weights * counts).sum().clamp(min=1e-12)


def group_mean_losses(token_losses: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor,
                      num_groups: int) -> torch.Tensor:
    """(G,) each group's mean token loss over its rows in the batch (0 where it has no supervised token)."""
    sums, counts = row_losses(token_losses, labels)
    group_sums = torch.zeros(num_groups, dtype=sums.dtype, device=sums.device).index_add(0, rows, sums)
    group_counts = torch.zeros(num_groups, dtype=sums.dtype, device=sums.device).index_add(0, rows, counts)
    return group_sums / group_counts.clamp(min=1)


def group_dro_step(q: torch.Tensor, group_losses: torch.Tensor, step_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(new q, robust loss): q_g * exp(step_size * loss_g) normalised, then sum_g q_g * loss_g (gradients flow
    through the losses only)."""
    q = q * torch.exp(step_size * group_losses.detach())
    q = q / q.sum()
    return q, (q * group_losses).sum()
