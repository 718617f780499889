"""The optimiser of a training run: AdamW, or Muon on the hidden weight matrices with AdamW for the rest.

Muon (mmllm.train.muon: torch.optim.Muon's rule, in the matmul dtype this machine has) orthogonalises each matrix's momentum with a few Newton-Schulz iterations, so every
direction of a weight matrix moves at the same rate; on the shapes demo it learned ~6x faster per step than
AdamW at the same learning rate. It only suits hidden matrices: embeddings, the output head, the patch
convolution, norms and biases stay with AdamW. Its update is scaled to AdamW's RMS ("match_rms_adamw"), so one
learning rate (and one schedule) serves both parts.
"""

from __future__ import annotations

from typing import Any, Iterable, Literal

import torch

from mmllm.train.muon import Muon, NSDtype

Algorithm = Literal["adamw", "muon"]


def uses_muon(name: str, ndim: int) -> bool:
    """A hidden weight matrix: 2-D, and neither an embedding table (token, position) nor the LM's output head.

    A tied LM head is the token embedding itself, so it stays with AdamW either way.
    """
    return ndim == 2 and "embed" not in name and "lm_head" not in name


def decays(name: str, ndim: int) -> bool:
    """Matrices decay; norms, biases, embeddings and position tables do not."""
    return ndim >= 2 and "embed" not in name


def param_groups(named_parameters: Iterable[tuple], *, lr: float, weight_decay: float,
                 algorithm: Algorithm, name: str) -> list[dict[str, Any]]:
    """The trainable parameters of one model part as optimiser groups named `name`, `name_no_decay` and, with
    Muon, `name_muon`; empty groups are left out. Rows are (name, parameter) or (name, parameter, ndim as built),
    the latter for parameters that FSDP has flattened into shards."""
    muon, decay, no_decay = [], [], []
    for row in named_parameters:
        param_name, param = row[0], row[1]
        ndim = row[2] if len(row) > 2 else param.ndim
        if not param.requires_grad:
            continue
        if algorithm == "muon" and uses_muon(param_name, ndim):
            muon.append(param)
        elif decays(param_name, ndim):
            decay.append(param)
        else:
            no_decay.append(param)
    groups = [
        {"params": muon, "lr": lr, "weight_decay": weight_decay, "name": f"{name}_muon", "muon": True},
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name, "muon": False},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}_no_decay", "muon": False},
    ]
    return [group for group in groups if group["params"]]


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon over the groups marked `muon`, torch.optim.AdamW over the others, as one optimiser.

    One object, so the Trainer, the learning-rate scheduler, gradient clipping and checkpoints see a single
    optimiser: its param_groups are the two inner optimisers' group dicts themselves, so a scheduler that sets
    group["lr"] steers both. The state dict holds both inner state dicts.
    """

    def __init__(self, groups: list[dict[str, Any]], betas: tuple[float, float] = (0.9, 0.98),
                 momentum: float = 0.95, fused: bool = False, ns_dtype: NSDtype = "auto") -> None:
        muon_groups = [group for group in groups if group.get("muon")]
        adamw_groups = [group for group in groups if not group.get("muon")]
        if not muon_groups:
            raise ValueError("MuonWithAdamW needs at least one group of weight matrices marked muon")
        self.muon = Muon(muon_groups, momentum=momentum, nesterov=True, adjust_lr_fn="match_rms_adamw",
                         ns_dtype=ns_dtype)
        self.adamw = torch.optim.AdamW(adamw_groups, betas=betas, fused=fused) if adamw_groups else None
        inner = [self.muon] + ([self.adamw] if self.adamw is not None else [])
        super().__init__([group for optimizer in inner for group in optimizer.param_groups], {})
        self._inner = inner

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self._inner:
            optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("optimizer state is not a Muon + AdamW state (was the checkpoint trained with AdamW?)")
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])
        # load_state_dict replaces the inner group dicts: point this optimiser's groups at the new ones
        self.param_groups = [group for optimizer in self._inner for group in optimizer.param_groups]


def build_optimizer(groups: list[dict[str, Any]], algorithm: Algorithm, betas: tuple[float, float],
                    muon_momentum: float, fused: bool, muon_ns_dtype: NSDtype = "auto") -> torch.optim.Optimizer:
    """AdamW over every group, or Muon + AdamW; the groups come from `param_groups`. muon_ns_dtype: the dtype of
    Muon's Newton-Schulz products (`auto`: bf16 where the hardware multiplies bf16 natively, else float32)."""
    if algorithm == "adamw":
        return torch.optim.AdamW(groups, betas=betas, fused=fused)
    if algorithm == "muon":
        return MuonWithAdamW(groups, betas=betas, momentum=muon_momentum, fused=fused, ns_dtype=muon_ns_dtype)
    raise ValueError(f"unknown optimizer {algorithm!r}; choose adamw or muon")
