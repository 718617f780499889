"""Preference tuning: the DPO and IPO losses over (chosen, rejected) answer pairs, and the reference they are
measured against.

DPO (Rafailov et al. 2023) raises the policy's log-probability ratio to a frozen reference on the chosen answer
against the rejected one: loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), with pi_* and ref_* the
answers' summed token log-probabilities. IPO (Azar et al. 2023) regresses the same difference, per answer token, on
1 / (2 beta): loss = ((pi_c - ref_c) / n_c - (pi_r - ref_r) / n_r - 1 / (2 beta))^2, as TRL computes it. The
metrics are TRL's: the implicit rewards beta * (pi - ref) of both answers, their margin, and the fraction of pairs
whose chosen answer earns the higher reward.

A batch of pairs holds the chosen answers in its first rows and the rejected ones, in the same order, in the
rest (data_pipelines.batching), so one forward pass scores both.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Literal, Optional, TypedDict

import torch
import torch.nn.functional as F
from torch import nn

PreferenceLoss = Literal["dpo", "ipo"]
Reference = Literal["frozen", "adapters_off"]


class PreferenceOptions(TypedDict, total=False):
    """model.preference: {loss: dpo | ipo, beta: 0.1, reference: frozen | adapters_off, sft_weight: 0.0}."""

    loss: PreferenceLoss
    beta: float
    reference: Reference
    sft_weight: float


DEFAULTS: PreferenceOptions = {"loss": "dpo", "beta": 0.1, "reference": "frozen", "sft_weight": 0.0}


def preference_options(given: Optional[dict]) -> PreferenceOptions:
    """The options with their defaults; ValueError naming an unknown key or value."""
    options = {**DEFAULTS, **(given or {})}
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"model.preference takes loss, beta, reference and sft_weight; got {unknown}")
    if options["loss"] not in ("dpo", "ipo"):
        raise ValueError(f"model.preference.loss is dpo or ipo, not {options['loss']!r}")
    if options["reference"] not in ("frozen", "adapters_off"):
        raise ValueError(f"model.preference.reference is frozen or adapters_off, not {options['reference']!r}")
    if not float(options["beta"]) > 0:
        raise ValueError(f"model.preference.beta must be positive, got {options['beta']}")
    if not float(options["sft_weight"]) >= 0:
        raise ValueError(f"model.preference.sft_weight must be 0 or more, got {options['sft_weight']}")
    options["beta"], options["sft_weight"] = float(options["beta"]), float(options["sft_weight"])
    return options


def sequence_logps(token_losses: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's supervised tokens (B,), their count (B,)).

    token_losses: (B, T-1) from VLM.forward, the cross-entropy of each target, 0 where unsupervised; labels: (B, T),
    labels[:, 1:] aligned with token_losses."""
    supervised = labels[:, 1:] != -100
    losses = token_losses.to(torch.promote_types(token_losses.dtype, torch.float32))  # bf16 sums in float32
    return -(losses * supervised).sum(dim=1), supervised.sum(dim=1)


def preference_loss(policy: torch.Tensor, reference: torch.Tensor, tokens: torch.Tensor, loss: PreferenceLoss,
                    beta: float, sft_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mean loss over pairs, metrics) from (2P,) sequence log-probs: the P chosen answers first, then the P rejected.

    tokens: (2P,) each answer's supervised token count (IPO's per-token normalisation). sft_weight adds that much of
    the chosen answers' negative log-likelihood per token (TRL's loss_type [sigmoid, sft]; RPO), which keeps DPO
    from lowering the chosen answers' own likelihood while it widens the margin."""
    chosen, rejected = policy.chunk(2)
    reference_chosen, reference_rejected = reference.chunk(2)
    chosen_ratio, rejected_ratio = chosen - reference_chosen, rejected - reference_rejected
    if loss == "dpo":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    else:
        chosen_tokens, rejected_tokens = tokens.float().clamp(min=1).chunk(2)
        losses = (chosen_ratio / chosen_tokens - rejected_ratio / rejected_tokens - 1 / (2 * beta)) ** 2
    total = losses.mean()
    if sft_weight:
        total = total + sft_weight * -chosen.sum() / tokens.chunk(2)[0].sum().clamp(min=1)
    chosen_reward, rejected_reward = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    metrics = {
        "rewards_chosen": chosen_reward.mean(),
        "rewards_rejected": rejected_reward.mean(),
        "rewards_margin": (chosen_reward - rejected_reward).mean(),
        "preference_accuracy": (chosen_reward > rejected_reward).float().mean(),
        "logps_chosen": chosen.detach().mean(),
        "logps_rejected": rejected.detach().mean(),
    }
    return total, metrics


def frozen_copy(model: nn.Module) -> nn.Module:
    """The reference of `reference: frozen`: a copy of the model as training starts, in eval mode, without
    gradients (dropout off, as TRL's reference)."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """The model without its LoRA adapters for the duration (TRL's reference under PEFT: no second copy)."""
    from mmllm.model.lora import lora_modules

    layers = list(lora_modules(model).values())
    for layer in layers:
        layer.adapter_enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.adapter_enabled = True
