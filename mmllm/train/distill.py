"""Knowledge-distillation losses: how far a student's next-token distribution is from a teacher's, per
supervised token, at a temperature.

With p the teacher's and q the student's softmax of logits / temperature over the vocabulary:
  forward KL  KL(p || q) = sum p (log p - log q)   the student covers everything the teacher deems likely
  reverse KL  KL(q || p) = sum q (log q - log p)   the student commits to the teacher's modes
  JSD(beta)   beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q   (the generalised JSD of
              GKD; bounded, at most log 2 at beta 0.5)
Each is multiplied by temperature^2 so its gradients keep the scale of the cross-entropy's as the temperature
grows (Hinton et al.), and averaged over the tokens whose label is supervised. The training loss is
`(1 - kd_weight) * CE + kd_weight * KD`. These are the losses torchtune's and TRL's distillation trainers offer.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

KDLoss = Literal["forward_kl", "reverse_kl", "jsd"]
KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, loss: KDLoss = "forward_kl",
                     temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """(..., V) logits of each -> (...) divergence per position, in float32, times temperature^2."""
    if loss not in KD_LOSSES:
        raise ValueError(f"kd loss must be one of {KD_LOSSES}, got {loss!r}")
    if temperature <= 0:
        raise ValueError(f"kd temperature must be positive, got {temperature}")
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if loss == "forward_kl":
        divergence = (log_p.exp() * (log_p - log_q)).sum(-1)
    elif loss == "reverse_kl":
        divergence = (log_q.exp() * (log_q - log_p)).sum(-1)
    else:
        if not 0 < beta < 1:
            raise ValueError(f"jsd beta must be in (0, 1), got {beta}")
        # log m = log(beta p + (1 - beta) q), computed from the logs without leaving log space
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
        divergence = (beta * (log_p.exp() * (log_p - log_m)).sum(-1)
                      + (1 - beta) * (log_q.exp() * (log_q - log_m)).sum(-1))
    return divergence * temperature**2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      loss: KDLoss = "forward_kl", temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """Mean divergence over supervised next-token positions: logits (B, T, V) predict labels (B, T) shifted by
    one, as VLM.forward's cross-entropy does (position t predicts token t + 1; -100 is not supervised)."""
    targets = labels[:, 1:]
    supervised = targets != -100
    divergence = token_divergence(student_logits[:, :-1][supervised], teacher_logits[:, :-1][supervised],
                                  loss, temperature, beta)
    return divergence.sum() / supervised.sum().clamp(min=1)
