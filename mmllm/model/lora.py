"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") and QLoRA (Dettmers et al. 2023):
a frozen base linear layer plus a trainable low-rank update, y = x W^T + b + s * B(A(dropout(x))), A (r, in)
random, B (out, r) zero, s = alpha / r (alpha / sqrt(r) with rsLoRA, Kalajdzievski 2023).

`add_lora` wraps the model's own `nn.Linear`s in place: a LoRALinear keeps the base's parameters under their
names (`...q_proj.weight`, `...q_proj.bias`) and adds `...q_proj.lora_A.weight` and `...q_proj.lora_B.weight`,
PEFT's names, so import, export and quantisation tables need no second copy. With `base: int8 | nf4` (QLoRA)
the frozen weight is kept quantised in memory (int8 per output channel, or torchao's NF4Tensor) and dequantised
per matmul in the forward and backward passes. `merge_lora` folds the updates back into plain `nn.Linear`s.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_PARTS = ("lm", "vision", "projector")
NF4_BLOCK = 64  # weights per NF4 scale (QLoRA's)


@dataclass
class LoRAConfig:
    """`model.lora` of a training config (and adapter_config.json's fields, in PEFT's names on export)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(LLAMA_TARGETS))  # linear layer names, any depth
    modules: list[str] = field(default_factory=lambda: ["lm"])  # the parts whose linears are wrapped
    base: Literal["float", "int8", "nf4"] = "float"  # int8 / nf4: QLoRA, the frozen base kept quantised
    rslora: bool = False  # scale by alpha / sqrt(rank) instead of alpha / rank

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"model.lora.rank must be a positive integer, got {self.rank!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout!r}")
        unknown = sorted(set(self.modules) - set(LORA_PARTS))
        if unknown or not self.modules:
            raise ValueError(f"model.lora.modules names {unknown or 'nothing'}; choose from {list(LORA_PARTS)}")
        if not self.targets:
            raise ValueError("model.lora.targets is empty: name the linear layers to adapt, e.g. [q_proj, v_proj]")
        if self.base not in ("float", "int8", "nf4"):
            raise ValueError(f"model.lora.base must be float, int8 or nf4, got {self.base!r}")
        self.alpha = float(self.alpha)

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def to_dict(self) -> dict:
        return asdict(self)


class LoRALinear(nn.Module):
    """A base linear layer (frozen; float, int8 or NF4) and its low-rank update (trainable)."""

    def __init__(self, base: nn.Linear, config: LoRAConfig) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.scaling = config.scaling
        self.base_kind = config.base
        weight = base.weight.detach()
        if config.base == "nf4":
            from torchao.quantization import to_nf4

            self.weight = nn.Parameter(to_nf4(weight.float(), NF4_BLOCK, nf4_scaler_block(weight.numel())),
                                       requires_grad=False)
        elif config.base == "int8":
            scale = weight.float().abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,): one scale per output row
            self.register_buffer("weight_int8", torch.round(weight.float() / scale[:, None]).to(torch.int8))
            self.register_buffer("weight_scale", scale.to(weight.dtype))
            self.weight = None
        else:
            self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach(), requires_grad=False)
        self.lora_A = nn.Linear(self.in_features, config.rank, bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_B = nn.Linear(config.rank, self.out_features, bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear and PEFT initialise A
        nn.init.zeros_(self.lora_B.weight)  # a fresh adapter changes nothing
        self.adapter_enabled = True  # False: the base layer alone (preference tuning's reference, adapters_off)

    def base_weight(self) -> torch.Tensor:
        """The base weight (out, in) as a float tensor: dequantised for int8 and NF4."""
        if self.base_kind == "int8":
            return self.weight_int8.to(self.weight_scale.dtype) * self.weight_scale[:, None]
        if self.base_kind == "nf4":
            return self.weight.get_original_weight()
        return self.weight

    def delta_weight(self) -> torch.Tensor:
        """s * B A: (out, in), the update the adapter adds to the base weight."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.base_kind == "nf4":
            from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4

            base = linear_nf4(x, self.weight)
            if self.bias is not None:
                base = base + self.bias
        else:  # int8: dequantised here, for this matmul only (autograd keeps no float copy beyond it)
            base = F.linear(x, self.base_weight().to(x.dtype), self.bias)
        if not self.adapter_enabled:
            return base
        return base + self.scaling * self.lora_B(self.lora_A(self.lora_dropout(x)))

    def merged(self) -> nn.Linear:
        """A plain nn.Linear holding base + update (float; int8 and NF4 bases dequantised)."""
        weight = self.base_weight().float() + self.delta_weight().float()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=weight.device, dtype=self.lora_A.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def nf4_scaler_block(numel: int) -> int:
    """torchao's NF4 needs the count of blocks divisible by the scaler block: the largest power of two <= 256
    that divides it."""
    blocks = numel // NF4_BLOCK
    size = 256
    while blocks % size:
        size //= 2
    return size


def lora_targets(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Names of the nn.Linear layers under `config.modules` whose last name is one of `config.targets`."""
    names = []
    for part in config.modules:
        root = getattr(model, part, None)
        if root is None:
            raise ValueError(f"model.lora.modules names {part!r}, which this model does not have")
        for name, module in root.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in config.targets:
                names.append(f"{part}.{name}")
    if not names:
        raise ValueError(f"model.lora.targets {config.targets} name no linear layer in {config.modules}")
    return names


def add_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze every parameter of `model`, then wrap the targeted linears in LoRALinear (in place); returns their
    names. Only the adapters' A and B require gradients afterwards."""
    names = lora_targets(model, config)
    wrap_linears(model, {name: config for name in names})
    return names


def wrap_linears(model: nn.Module, layers: dict[str, LoRAConfig]) -> None:
    """Freeze every parameter of `model`, then wrap each named nn.Linear in a LoRALinear of its own config (rank
    and alpha may differ per layer, as an adapter folder's rank_pattern / alpha_pattern say)."""
    if any(config.base == "nf4" for config in layers.values()):
        try:
            import torchao  # noqa: F401  (imported here to fail before any layer is wrapped)
        except ImportError:
            raise ImportError("model.lora.base nf4 needs torchao: pip install 'mmllm[quantize]'") from None
    model.requires_grad_(False)
    for name, config in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), config))


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor, by its name in the model (`...q_proj.lora_A.weight`)."""
    return {name: tensor for name, tensor in model.state_dict().items() if ".lora_A." in name or ".lora_B." in name}


def merged_state_dict(model: nn.Module, adapters: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of the plain model the adapters merge into, without changing `model` (no copy of it is
    made: NF4 bases cannot be deep-copied): each LoRALinear's `weight` is its base + update, its A and B gone.
    adapters=False: the base alone (dequantised), the model the adapters were trained on."""
    layers = lora_modules(model)
    state = {}
    for name, tensor in model.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        if owner in layers:
            if leaf == "weight" or leaf == "weight_int8":
                weight = layers[owner].base_weight().float()
                state[f"{owner}.weight"] = (weight + layers[owner].delta_weight().float() if adapters
                                            else weight).detach()
            elif leaf == "bias":
                state[name] = tensor
            continue  # lora_A / lora_B (owner is ...q_proj.lora_A) fall through below; weight_scale dropped
        parent = owner.rpartition(".")[0]
        if parent in layers and owner.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):
            continue
        state[name] = tensor
    return state


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear by the plain nn.Linear its base and update add up to (in place); returns how
    many were merged."""
    merged = lora_modules(model)
    for name, module in merged.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module.merged())
    return len(merged)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) weights of a model with LoRA layers: an int8 base's weights are buffers (weight_int8), an
    NF4 base's a parameter of its full (out, in) shape; both count as the base's weights, not as nothing."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(layer.weight_int8.numel() for layer in lora_modules(model).values() if layer.base_kind == "int8")
    return trainable, total
