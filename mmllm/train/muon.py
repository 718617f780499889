"""Muon (momentum orthogonalised by Newton-Schulz) for hidden weight matrices, in the dtype this machine multiplies
fastest.

The update rule is torch.optim.Muon's (Nesterov momentum, quintic Newton-Schulz, decoupled weight decay, the lr
adjustments), with one difference: torch always runs the Newton-Schulz matrix products in bfloat16. That is the
right call on a GPU or a CPU with bf16 matrix units (AMX, AVX512-BF16), but on a CPU without them bf16 matmuls fall
back to slow reference kernels: on a 2-core AVX2 EPYC one iteration on a 192 x 512 matrix takes 43 ms in bf16
against 0.95 ms in float32, and the shapes demo's optimiser step took 5.3 of its 6.1 seconds. `ns_dtype="auto"`
picks bf16 where the hardware has it and float32 elsewhere; the state dict is torch.optim.Muon's, so checkpoints
move between the two.

Matrices of one shape are orthogonalised together, as one batch of matrix products per iteration: a small model's
step is otherwise hundreds of small matmuls whose call overhead outweighs their arithmetic (the shapes demo's
Muon step, 4 + 2 blocks, went from 47 to ... ms; bench/train_step.py --demo).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from mmllm.machine import cpu_has_bf16_matmul

NSDtype = Literal["auto", "bfloat16", "float32"]


def newton_schulz_dtype(choice: NSDtype, device: torch.device) -> torch.dtype:
    """The dtype of the Newton-Schulz products: bf16 on accelerators and bf16-capable CPUs, else float32."""
    if choice != "auto":
        return getattr(torch, choice)
    if device.type != "cpu" or cpu_has_bf16_matmul():
        return torch.bfloat16
    return torch.float32


def orthogonalise(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """(A, B) matrix -> approximately U V^T of its SVD (singular values pushed into roughly [0.7, 1.2]).

    The quintic iteration X <- a X + (b G + c G^2) X with G = X X^T, on the wide orientation (so G is the smaller
    Gram matrix), after scaling X to Frobenius norm 1 (so its spectral norm is at most 1).
    """
    a, b, c = coefficients
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T  # (A, A), A <= B
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.addmm(x, polynomial, x, beta=a)
    return x.T if tall else x


def orthogonalise_batch(updates: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                        dtype: torch.dtype) -> torch.Tensor:
    """(N, A, B) wide matrices (A <= B) -> each one's orthogonalise, as batched products: the same iteration,
    each matrix scaled by its own Frobenius norm."""
    a, b, c = coefficients
    x = updates.to(dtype)
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = torch.bmm(x, x.transpose(1, 2))  # (N, A, A)
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, polynomial, x, beta=a)
    return x


def orthogonalise_all(updates: list[torch.Tensor], coefficients: tuple[float, float, float], steps: int, eps: float,
                      dtype: torch.dtype) -> list[torch.Tensor]:
    """Each (A, B) update orthogonalised; the ones of one shape (tall ones transposed to wide) in one batch, a
    shape met once alone (exactly torch.optim.Muon's products)."""
    wide = [u.T if u.size(0) > u.size(1) else u for u in updates]
    by_shape: dict[tuple, list[int]] = {}
    for index, update in enumerate(wide):
        by_shape.setdefault((tuple(update.shape), update.device, update.dtype), []).append(index)
    done: list[torch.Tensor | None] = [None] * len(updates)
    for indices in by_shape.values():
        if len(indices) == 1:
            done[indices[0]] = orthogonalise(updates[indices[0]], coefficients, steps, eps, dtype)
            continue
        results = orthogonalise_batch(torch.stack([wide[i] for i in indices]), coefficients, steps, eps, dtype)
        for i, result in zip(indices, results):
            done[i] = result.T if updates[i].size(0) > updates[i].size(1) else result
    return done


def adjusted_lr(lr: float, rule: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix rate: "match_rms_adamw" scales by 0.2 sqrt(max(A, B)), so the update's RMS
    matches AdamW's and one learning rate serves both; "original" by sqrt(max(1, A / B))."""
    rows, cols = shape[:2]
    if rule is None or rule == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    if rule == "spectral_unclamped":
        return lr * math.sqrt(rows / cols)
    return lr


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's algorithm and state, with the Newton-Schulz dtype chosen per machine (`ns_dtype`)."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None,
                 ns_dtype: NSDtype = "auto") -> None:
        if adjust_lr_fn not in (None, "original", "match_rms_adamw", "spectral_unclamped"):
            raise ValueError(f"unknown Muon adjust_lr_fn {adjust_lr_fn!r}")
        if ns_dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"unknown Muon ns_dtype {ns_dtype!r}; choose auto, bfloat16 or float32")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for param in group["params"]:
                if param.ndim != 2:
                    raise ValueError(f"Muon only takes 2-D weight matrices, got a parameter of shape "
                                     f"{tuple(param.shape)}")
        # Not a group key: state dicts stay torch.optim.Muon's, and a checkpoint resumes on another machine.
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            params, updates = [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buffer = state["momentum_buffer"]
                buffer.lerp_(grad, 1 - momentum)  # B = mu B + (1 - mu) g
                params.append(param)
                updates.append(grad.lerp(buffer, momentum) if group["nesterov"] else buffer)
            if not params:
                continue
            dtype = newton_schulz_dtype(self.ns_dtype, params[0].device)
            updates = orthogonalise_all(updates, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
            for param, update in zip(params, updates):
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update.to(param.dtype), alpha=-adjusted_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss
