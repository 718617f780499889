"""The projector: pixel shuffle (r x r neighbouring patches -> one token) then an MLP into the LM width."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmllm.config import VLMConfig


def pixel_shuffle(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, g*g, d) patches of a square grid -> (N, (g/r)^2, d*r*r) tokens.

    Token (i, j) of the (g/r) x (g/r) output grid (reading order) is the concatenation of the r x r patches
    at rows i*r .. i*r+r-1 and columns j*r .. j*r+r-1, row by row.
    """
    N, L, d = patches.shape
    g = math.isqrt(L)
    if g * g != L:
        raise ValueError(f"pixel shuffle needs a square patch grid, got {L} patches")
    if g % factor:
        raise ValueError(f"patch grid {g} is not divisible by pixel shuffle factor {factor}")
    s = g // factor
    x = patches.reshape(N, s, factor, s, factor, d)  # (N, row block, row in block, col block, col in block, d)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (N, s, s, r, r, d): neighbourhoods together
    return x.reshape(N, s * s, factor * factor * d)


class Projector(nn.Module):
    """(N, g*g, vision.dim) -> (N, tokens_per_image, lm.dim): pixel shuffle, fc1, GELU, fc2."""

    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        self.factor = config.pixel_shuffle
        self.fc1 = nn.Linear(config.vision.dim * self.factor**2, config.lm.dim)
        self.fc2 = nn.Linear(config.lm.dim, config.lm.dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(pixel_shuffle(patches, self.factor))))

    def init_weights(self, std: float = 0.02) -> None:
        for linear in (self.fc1, self.fc2):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)
