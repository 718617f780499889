"""Structured pruning of the language model: whole attention heads, MLP channels and decoder layers, ranked by
an importance score measured on calibration samples, cut out into a smaller ordinary VLM.

Importance (`measure_importance`), per decoder layer:
- activation (the default): an MLP channel c scores mean_t |h_tc| * ||W_down[:, c]||, h = silu(gate x) * up x
  (what the channel adds to the residual stream, as Wanda and LLM-Pruner's activation criterion); a query head
  scores the mean norm of its own share of o_proj's output, ||W_o[:, head] y_head||.
- gradient: the first-order Taylor estimate of the loss change when the structure is removed, |sum over its
  weights of w * dL/dw| with dL/dw accumulated over the calibration batches (LLM-Pruner's vector-wise
  criterion). The sum comes before the absolute value on purpose: removing a head zeroes all its weights at
  once, and the loss then moves by about -sum(w * dL/dw), where terms of opposite sign cancel; a sum of
  |w * dL/dw| (the element-wise variant) would score each weight as if it were removed alone.
- a layer scores 1 - cos(x_in, x_out) of the residual stream across it (ShortGPT's block influence): a
  layer that barely turns the stream can go.
Padding positions are left out of every mean.

Cutting (`prune`): every layer keeps the same number of channels and of query heads (one LMConfig describes
them all); under grouped-query attention each key/value head keeps the same number of its query heads, so the
grouping stays valid and key/value projections are untouched. The vision tower and projector are kept whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmllm.config import VLMConfig
from mmllm.errors import UsageError
from mmllm.model import VLM

IMPORTANCE = ("activation", "gradient")


@dataclass
class Importance:
    """Scores, higher = keep: heads (L, n_heads), channels (L, mlp_dim), layers (L,); `tokens` measured on."""

    heads: torch.Tensor
    channels: torch.Tensor
    layers: torch.Tensor
    tokens: int


def measure_importance(model: VLM, batches, method: str = "activation") -> Importance:
    """Scores of every head, channel and layer over `batches` (dicts of the training collate: input_ids,
    attention_mask, labels, pixel_values, image_counts)."""
    if method not in IMPORTANCE:
        raise UsageError(f"importance must be one of {', '.join(IMPORTANCE)}, got {method!r}")
    lm = model.lm
    c = lm.config
    L = c.n_layers
    heads = torch.zeros(L, c.n_heads, dtype=torch.float64)
    channels = torch.zeros(L, c.mlp_dim, dtype=torch.float64)
    turns = torch.zeros(L, dtype=torch.float64)
    state = {"mask": None, "tokens": 0}

    def valid(x: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (tokens, ...) of the non-padding positions
        return x[state["mask"]]

    def on_mlp(i):
        def hook(module, inputs):
            h = valid(inputs[0]).detach().double()  # (tokens, mlp_dim)
            channels[i] += h.abs().sum(0) * module.weight.detach().double().norm(dim=0)
        return hook

    def on_attention(i):
        def hook(module, inputs):
            y = valid(inputs[0]).detach().double().view(-1, c.n_heads, c.head_dim)  # (tokens, nh, hd)
            w = module.weight.detach().double().view(c.dim, c.n_heads, c.head_dim)  # (dim, nh, hd)
            heads[i] += torch.einsum("thd,ehd->the", y, w).norm(dim=2).sum(0)  # each head's share of o_proj
        return hook

    def on_layer(i):
        def hook(module, inputs, output):
            x_in, x_out = valid(inputs[0]).detach().double(), valid(output).detach().double()
            turns[i] += (1 - F.cosine_similarity(x_in, x_out, dim=-1)).sum()
        return hook

    handles = []
    for i, layer in enumerate(lm.layers):
        handles.append(layer.register_forward_hook(on_layer(i)))
        if method == "activation":
            handles.append(layer.mlp.down_proj.register_forward_pre_hook(on_mlp(i)))
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(on_attention(i)))
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        for batch in batches:
            state["mask"] = batch["attention_mask"].bool()
            state["tokens"] += int(state["mask"].sum())
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values", "image_counts")
                      if batch.get(k) is not None}
            if method == "gradient":
                model(**inputs).loss.backward()
            else:
                with torch.no_grad():
                    model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if state["tokens"] == 0:
        raise UsageError("the calibration data gave no tokens to measure importance on")
    if method == "gradient":
        heads, channels = _taylor_scores(model)
        model.zero_grad(set_to_none=True)
    else:
        heads, channels = heads / state["tokens"], channels / state["tokens"]
    return Importance(heads=heads.float(), channels=channels.float(), layers=(turns / state["tokens"]).float(),
                      tokens=state["tokens"])


def _taylor_scores(model: VLM) -> tuple[torch.Tensor, torch.Tensor]:
    """|sum of w * grad| over each head's q rows and o columns, and each channel's gate / up rows and down column."""
    c = model.lm.config
    heads, channels = [], []
    for layer in model.lm.layers:
        attention, mlp = layer.self_attn, layer.mlp

        def wg(linear: nn.Linear) -> torch.Tensor:
            if linear.weight.grad is None:
                raise UsageError("no gradient reached the LM: the calibration data has no supervised tokens")
            return (linear.weight.detach() * linear.weight.grad).double()

        q = wg(attention.q_proj).view(c.n_heads, c.head_dim, c.dim).sum(dim=(1, 2))
        o = wg(attention.o_proj).view(c.dim, c.n_heads, c.head_dim).sum(dim=(0, 2))
        heads.append((q + o).abs())
        channels.append((wg(mlp.gate_proj).sum(1) + wg(mlp.up_proj).sum(1) + wg(mlp.down_proj).sum(0)).abs())
    return torch.stack(heads), torch.stack(channels)


@dataclass
class PrunePlan:
    """What to keep: sorted indices per kept layer, and the layers kept."""

    layers: list[int]
    heads: list[list[int]]  # per kept layer: query heads kept, grouped by key/value head, in order
    channels: list[list[int]]  # per kept layer: MLP channels kept, in order


def check_shares(config: VLMConfig, attention_heads: float, mlp_channels: float, layers: int) -> None:
    """UsageError for shares outside [0, 1) or a layer count that would leave no layer."""
    n_layers = config.lm.n_layers
    for name, share in (("attention heads", attention_heads), ("MLP channels", mlp_channels)):
        if not 0 <= share < 1:
            raise UsageError(f"the share of {name} to prune must be in [0, 1), got {share}")
    if not 0 <= layers < n_layers:
        raise UsageError(f"--layers must be in [0, {n_layers}) for this {n_layers}-layer model, got {layers}")


def plan(config: VLMConfig, importance: Importance, attention_heads: float, mlp_channels: float,
         layers: int = 0) -> PrunePlan:
    """The least important `attention_heads` share of query heads (the same count under each key/value head),
    `mlp_channels` share of MLP channels (the same count in every layer) and `layers` whole layers to cut."""
    check_shares(config, attention_heads, mlp_channels, layers)
    c = config.lm
    per_group = c.n_heads // c.n_kv_heads
    keep_per_group = per_group - math.floor(attention_heads * per_group + 1e-9)  # >= 1 as the share is < 1
    keep_channels = c.mlp_dim - math.floor(mlp_channels * c.mlp_dim + 1e-9)
    kept_layers = sorted(torch.argsort(importance.layers, descending=True)[:c.n_layers - layers].tolist())
    heads, channels = [], []
    for i in kept_layers:
        scores = importance.heads[i].view(c.n_kv_heads, per_group)
        top = torch.argsort(scores, dim=1, descending=True)[:, :keep_per_group].sort(dim=1).values
        heads.append([g * per_group + int(h) for g in range(c.n_kv_heads) for h in top[g]])
        channels.append(sorted(torch.argsort(importance.channels[i], descending=True)[:keep_channels].tolist()))
    return PrunePlan(layers=kept_layers, heads=heads, channels=channels)


def prune(model: VLM, keep: PrunePlan) -> VLM:
    """A new VLM with only the kept layers, heads and channels, their weights copied; everything else as it was."""
    c = model.config
    lm_fields = {**c.to_dict()["lm"], "n_layers": len(keep.layers), "n_heads": len(keep.heads[0]),
                 "mlp_dim": len(keep.channels[0]), "head_dim": c.lm.head_dim}
    config = VLMConfig.from_dict({**c.to_dict(), "lm": lm_fields})
    pruned = VLM(config).to(next(model.parameters()).dtype)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("lm.layers.")}
    hd = c.lm.head_dim
    for new_index, (old_index, heads, channels) in enumerate(zip(keep.layers, keep.heads, keep.channels)):
        old, prefix = model.lm.layers[old_index], f"lm.layers.{new_index}."
        rows = torch.tensor([h * hd + j for h in heads for j in range(hd)])  # q rows / o columns of kept heads
        ch = torch.tensor(channels)
        for name, tensor in old.state_dict().items():
            if name.startswith("self_attn.q_proj."):
                tensor = tensor[rows]
            elif name == "self_attn.o_proj.weight":
                tensor = tensor[:, rows]
            elif name.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
                tensor = tensor[ch]
            elif name == "mlp.down_proj.weight":
                tensor = tensor[:, ch]
            state[prefix + name] = tensor.clone()
    pruned.load_state_dict(state)
    return pruned.eval()


def lm_parameters(model: VLM) -> int:
    """Parameters of the language model (the tied head counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.lm.parameters()}.values())
