"""The stored form of a quantised model folder (`mmllm export --quantize int8|int4`): each linear layer's
weight as integers plus float scales in model.safetensors, and what was done in config.json's "quantization".

- int8: symmetric per output channel. scale = max|w| / 127 over the row, q = round(w / scale) in [-127, 127];
  tensors NAME.weight_int8 (out, in) int8 and NAME.weight_scale (out,) float32.
- int4: asymmetric per group of G input channels (G = 128, 64 or 32, the largest dividing the width). Per
  group, scale = (max - min) / 15 and q = round((w - min) / scale) in [0, 15], two per byte (even column in
  the low nibble); tensors NAME.weight_int4 (out, in / 2) uint8, NAME.weight_scale and NAME.weight_min
  (out, in / G) float32. That is the grid of torchao's CPU int4 kernel: the group's min and max are grid points,
  so quantising the restored weights again lands on the same integers.

Loading restores float weights (q * scale, or q * scale + min) and quantises them again with the fastest
method on the machine that loads them (mmllm.compress.quantization): the file is portable, the kernels are not.
Everything is checked against the model before it is used: a missing, extra or misshapen tensor is an error
naming the layer.
"""

from __future__ import annotations

import torch

from mmllm.errors import UsageError

FORMATS = {8: "int8-symmetric-per-channel", 4: "int4-asymmetric-per-group"}


def quantization_spec(bits: int, layers: dict[str, int | None]) -> dict:
    """config.json's "quantization" entry."""
    return {"bits": bits, "format": FORMATS[bits], "layers": dict(sorted(layers.items()))}


def pack(tensors: dict[str, torch.Tensor], layers: dict[str, int | None], bits: int) -> dict[str, torch.Tensor]:
    """A state dict with the weights of `layers` (name -> int4 group size) replaced by their stored int form."""
    packed = dict(tensors)
    for name, group in layers.items():
        w = packed.pop(f"{name}.weight").float()
        if bits == 8:
            scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)  # (out,)
            packed[f"{name}.weight_int8"] = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
            packed[f"{name}.weight_scale"] = scale
        else:
            out, width = w.shape
            groups = w.view(out, width // group, group)
            low, high = groups.amin(dim=2), groups.amax(dim=2)  # (out, in / G)
            scale = ((high - low) / 15).clamp(min=torch.finfo(torch.float32).tiny)
            q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8).view(out, width)
            packed[f"{name}.weight_int4"] = q[:, 0::2] | (q[:, 1::2] << 4)
            packed[f"{name}.weight_scale"] = scale
            packed[f"{name}.weight_min"] = low
    return packed


def unpack(tensors: dict[str, torch.Tensor], spec: dict, expected: dict[str, torch.Tensor],
           source: str) -> dict[str, torch.Tensor]:
    """Float weights from a stored quantised state dict, checked against `expected` (the model's state dict)."""
    bits, layers = _check_spec(spec, source)
    restored = dict(tensors)
    for name, group in layers.items():
        target = expected.get(f"{name}.weight")
        if target is None or target.dim() != 2:
            raise UsageError(f"{source}: quantized layer {name} is not a linear layer of this model")
        out, width = target.shape
        if bits == 8:
            shapes = {"weight_int8": ((out, width), torch.int8), "weight_scale": ((out,), torch.float32)}
        else:
            if not isinstance(group, int) or group < 2 or width % group:
                raise UsageError(f"{source}: layer {name} has int4 group size {group!r}, which does not divide {width}")
            shapes = {"weight_int4": ((out, width // 2), torch.uint8),
                      "weight_scale": ((out, width // group), torch.float32),
                      "weight_min": ((out, width // group), torch.float32)}
        parts = {}
        for suffix, (shape, dtype) in shapes.items():
            tensor = restored.pop(f"{name}.{suffix}", None)
            if tensor is None:
                raise UsageError(f"{source}: quantized layer {name} has no {name}.{suffix}")
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise UsageError(f"{source}: {name}.{suffix} is {tensor.dtype} {tuple(tensor.shape)}, "
                                 f"expected {dtype} {shape}")
            parts[suffix] = tensor
        if bits == 8:
            weight = parts["weight_int8"].float() * parts["weight_scale"][:, None]
        else:
            nibbles = parts["weight_int4"]
            q = torch.stack([nibbles & 15, nibbles >> 4], dim=2).view(out, width // group, group).float()
            weight = (q * parts["weight_scale"][..., None] + parts["weight_min"][..., None]).view(out, width)
        restored[f"{name}.weight"] = weight.to(target.dtype)
    leftover = sorted(k for k in restored if k.endswith(("weight_int8", "weight_int4", "weight_scale", "weight_min")))
    if leftover:
        raise UsageError(f"{source}: quantized tensors of layers config.json does not list: {', '.join(leftover[:4])}")
    return restored


def _check_spec(spec: object, source: str) -> tuple[int, dict]:
    if not isinstance(spec, dict) or spec.get("bits") not in FORMATS or spec.get("format") != FORMATS.get(spec.get("bits")):
        raise UsageError(f"{source}: config.json's quantization entry is not one this mmllm reads: {spec!r}")
    layers = spec.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise UsageError(f"{source}: config.json's quantization entry lists no layers")
    return spec["bits"], layers
