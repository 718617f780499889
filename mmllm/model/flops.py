"""FLOP counts of a VLM from its config: what MFU is measured against, and the figure fit's model summary prints.

Matmul FLOPs of a forward pass are 2 * (weights of the matmul) per token; training adds twice that for
the backward (gradients with respect to inputs and to weights): 6 * N per token.
Attention scores and the weighted sum of values are matmuls without weights: per token and layer
2 * T * d_attn each (T keys, d_attn = heads * head_dim), so 4 * T * d_attn forward, 12 * T * d_attn in
training: the PaLM appendix B formula, which counts the full T x T matrix even under a causal mask
(the convention of nanoGPT/PaLM MFU; causal kernels may skip up to half of that work).

  train FLOPs per step = LM:        B * T_lm * (6 * N_lm + 12 * L_lm * T_lm * d_attn_lm)
                       + ViT:       N_img * P * (6 * N_vit + 12 * L_vit * P * d_vit)
                       + projector: N_img * tokens_per_image * 6 * N_proj
  N_lm   = q, k, v, o, gate, up, down weights of every layer + vocab * dim (the LM head, tied or not)
  N_vit  = patch conv (3 * p * p * dim) + q, k, v, out, fc1, fc2 weights of every layer
  N_proj = fc1 + fc2 weights (the linear projector: proj); P = patches per image; T_lm counts image and text tokens.
Norms, embeddings lookups, rotary, activations and softmax are not counted (they are not matmuls).
"""

from __future__ import annotations

from mmllm.config import VLMConfig


def matmul_params(config: VLMConfig) -> dict[str, int]:
    """Weights that take part in a matmul, per part (the counts N_lm, N_vit, N_proj above)."""
    lm, vit = config.lm, config.vision
    attn = lm.dim * lm.head_dim * (2 * lm.n_heads + 2 * lm.n_kv_heads)  # q, o: nh*hd; k, v: n_kv*hd
    mlp = 3 * lm.dim * lm.mlp_dim
    n_lm = lm.n_layers * (attn + mlp) + lm.vocab_size * lm.dim
    if vit is None:  # a language model alone
        return {"lm": n_lm, "vision": 0, "projector": 0}
    n_vit = 3 * vit.patch_size**2 * vit.dim + vit.n_layers * (4 * vit.dim**2 + 2 * vit.dim * vit.mlp_dim)
    r2 = config.pixel_shuffle**2
    n_proj = vit.dim * r2 * lm.dim + (lm.dim * lm.dim if config.projector == "mlp" else 0)
    return {"lm": n_lm, "vision": n_vit, "projector": n_proj}


def forward_flops(config: VLMConfig, batch_size: int, seq_len: int, n_images: int) -> float:
    """Forward FLOPs of VLM.forward on (batch_size, seq_len) tokens with n_images images (1/3 of training)."""
    n = matmul_params(config)
    lm, vit = config.lm, config.vision
    lm_flops = batch_size * seq_len * (2 * n["lm"] + 4 * lm.n_layers * seq_len * lm.n_heads * lm.head_dim)
    if vit is None:
        return lm_flops
    patches = vit.grid_size**2
    vit_flops = n_images * patches * (2 * n["vision"] + 4 * vit.n_layers * patches * vit.dim)
    proj_flops = n_images * config.tokens_per_image * 2 * n["projector"]
    return lm_flops + vit_flops + proj_flops


def tiles_per_image(config: VLMConfig) -> int:
    """Images the vision tower encodes for one square picture: 1, or with image splitting the grid of tiles
    (the long side scaled to longest_edge, in tiles of image_size) plus the whole image."""
    if not config.image_splitting or not config.reads_images:
        return 1
    side = -(-config.longest_edge // config.vision.image_size)
    return side * side + 1 if side > 1 else 1


def train_flops(config: VLMConfig, batch_size: int, seq_len: int, n_images: int) -> float:
    """FLOPs of one training step (forward + backward = 3x forward), the formula above."""
    return 3 * forward_flops(config, batch_size, seq_len, n_images)
