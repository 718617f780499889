"""The vision encoder: a SigLIP-style ViT turning images (N, 3, H, W) into patch features (N, h*w, dim).

Conv patch embedding, learned absolute position embeddings (bicubic-interpolated when the image size is not
the configured one), pre-norm LayerNorm blocks with bidirectional attention and a GELU MLP, a final
LayerNorm, no CLS token. Parameter names follow Hugging Face SigLIP's vision tower.
"""

from __future__ import annotations

import math

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn

from mmllm.config import VisionConfig
from mmllm.model.sdpa import scaled_dot_product_attention


def sincos_grid(grid_size: int, dim: int) -> torch.Tensor:
    """(grid_size^2, dim) fixed 2-D position codes in reading order: the first half of the channels encode
    the row, the second half the column, each as sin/cos pairs at geometrically spaced frequencies."""
    quarter = dim // 4
    frequencies = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float64) / max(quarter, 1)))  # (dim/4,)
    coords = torch.arange(grid_size, dtype=torch.float64)
    angles = coords[:, None] * frequencies[None, :]  # (g, dim/4)
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # (g, dim/2)
    rows = axis[:, None, :].expand(grid_size, grid_size, -1)  # row code of patch (r, c)
    cols = axis[None, :, :].expand(grid_size, grid_size, -1)  # column code of patch (r, c)
    table = torch.zeros(grid_size, grid_size, dim, dtype=torch.float64)
    table[..., : 2 * quarter] = rows
    table[..., 2 * quarter : 4 * quarter] = cols
    return table.reshape(grid_size * grid_size, dim).float()


class VisionEmbeddings(nn.Module):
    """Patches -> vectors, plus a learned position embedding per patch of the configured grid."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.grid_size = config.grid_size
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Conv2d(3, config.dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Embedding(config.grid_size**2, config.dim)

    def positions(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a height x width patch grid: (height * width, dim)."""
        table = self.position_embedding.weight  # (g*g, dim)
        if (height, width) == (self.grid_size, self.grid_size):
            return table
        grid = table.reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)  # (1, dim, g, g)
        grid = F.interpolate(grid.float(), size=(height, width), mode="bicubic", align_corners=False)
        return grid.to(table.dtype).permute(0, 2, 3, 1).reshape(height * width, -1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (N, dim, h, w)
        _, _, height, width = patches.shape
        patches = patches.flatten(2).transpose(1, 2)  # (N, h*w, dim), row-major over the grid
        return patches + self.positions(height, width)


class VisionAttention(nn.Module):
    """Bidirectional multi-head self-attention over the patches of one image."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.dim // config.n_heads
        self.q_proj = nn.Linear(config.dim, config.dim)
        self.k_proj = nn.Linear(config.dim, config.dim)
        self.v_proj = nn.Linear(config.dim, config.dim)
        self.out_proj = nn.Linear(config.dim, config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, D = x.shape
        q, k, v = (
            proj(x).view(N, L, self.n_heads, self.head_dim).transpose(1, 2)  # (N, nh, L, hd)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        y = scaled_dot_product_attention(q, k, v)  # no mask: every patch sees every patch
        return self.out_proj(y.transpose(1, 2).reshape(N, L, D))


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.dim, config.mlp_dim)
        self.fc2 = nn.Linear(config.mlp_dim, config.dim)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class VisionLayer(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.self_attn = VisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = VisionMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionTransformerLayers(nn.Module):
    """The stack of blocks; a module of its own so weights are named `encoder.layers.{i}` as in SigLIP."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(config) for _ in range(config.n_layers))
        self.checkpointing = False  # recompute each block in backward (training only)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x


class VisionEncoder(nn.Module):
    """pixel_values (N, 3, H, W) -> patch features (N, (H/p) * (W/p), dim), patches in reading order."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = VisionTransformerLayers(config)
        self.post_layernorm = nn.LayerNorm(config.dim, eps=config.norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))

    def init_weights(self, std: float = 0.02) -> None:
        """Normal(0, std) for linears; zero biases; LayerNorms at identity. The patch conv gets a 1/sqrt(fan_in)
        std and the position table a 2-D sine-cosine grid, so that from the first step each patch vector
        carries its content and its row and column at comparable scales (learned positions from noise are
        what a from-scratch ViT learns last)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        conv = self.embeddings.patch_embedding
        nn.init.normal_(conv.weight, std=1.0 / math.sqrt(conv.weight[0].numel()))
        with torch.no_grad():
            self.embeddings.position_embedding.weight.copy_(sincos_grid(self.config.grid_size, self.config.dim))
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for layer in self.encoder.layers:
            nn.init.normal_(layer.self_attn.out_proj.weight, std=residual_std)
            nn.init.normal_(layer.mlp.fc2.weight, std=residual_std)
