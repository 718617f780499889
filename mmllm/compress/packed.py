"""Linear layers for CPU inference over torch's prepacked kernels: the fast path of decoding on a CPU.

A decode step multiplies one row of activations by every weight matrix, so it streams the weights from memory
once per token: fewer bytes per weight is the lever, and these layers reach torch's own weight-only kernels
without a tensor subclass in between (torchao's int4 layout ran 10x slower here, bench/quantize.py):

- `Int8Linear`: int8 weights per output channel, `aten._weight_int8pack_mm` on bfloat16 activations for a few
  rows (decode); a prompt's many rows dequantise the weight to bfloat16 and run one GEMM (the packed kernel is
  made for GEMV, a dense bfloat16 GEMM beats it 2-3x at 512 rows).
- `Int4Linear`: asymmetric int4 groups (tinygemm's layout: w = (q - 8) * scale + zero), `aten.
  _weight_int4pack_mm_for_cpu` for a few rows, dequantised to bfloat16 for many.

Both compute in bfloat16 and cast their results back to the activations' dtype: fast where the CPU has bf16
instructions (AVX-512 BF16, AMX); elsewhere `--quantize`'s measured choice (mmllm.compress.quantization) decides
whether they beat the other methods. Neither trains: they hold buffers, not parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

GEMV_ROWS = 8  # up to this many rows the packed GEMV kernels win; above, a dequantised GEMM does
INT8_KERNEL_WIDTH = 16  # _weight_int8pack_mm crashes (torch 2.14) on several rows unless in_features % 16 == 0
INT4_GROUP_SIZES = (128, 64, 32)  # input channels per int4 scale; the largest that divides the width
INT4_OUTPUT_MULTIPLE = 16  # the CPU int4 kernel packs output channels in blocks of 16
INT4_BLOCK = 64  # ... and whole blocks of 64 in the layout Int4Linear.dequantized reads


class QuantizedLinear(nn.Module, ABC):
    """What both layers share: a packed kernel for a few rows, a dequantised GEMM for many, in compute_dtype."""

    in_features: int
    out_features: int
    compute_dtype: torch.dtype
    bias: torch.Tensor | None

    def uses_kernel(self, rows: int) -> bool:
        return rows <= GEMV_ROWS

    @abstractmethod
    def kernel(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (n, in) in compute_dtype -> (n, out), through the packed weight-only kernel."""

    @abstractmethod
    def dequantized(self) -> torch.Tensor:
        """The (out, in) weight the integers stand for, in compute_dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.compute_dtype)
        if self.uses_kernel(rows.size(0)):
            out = self.kernel(rows)
            if self.bias is not None:
                out = out + self.bias
        else:
            out = F.linear(rows, self.dequantized(), self.bias)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class Int8Linear(QuantizedLinear):
    """int8 weights (one float scale per output channel) for CPU inference."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,)
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(compute_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(compute_dtype))

    def dequantized(self) -> torch.Tensor:
        return self.weight_int8.to(self.compute_dtype) * self.scale[:, None]

    def uses_kernel(self, rows: int) -> bool:
        return rows == 1 or (rows <= GEMV_ROWS and self.in_features % INT8_KERNEL_WIDTH == 0)

    def kernel(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 x {self.compute_dtype}"


def int4_group_size(linear: nn.Linear) -> int | None:
    """The int4 group size for this layer, or None when the kernel cannot take it."""
    if linear.out_features % INT4_OUTPUT_MULTIPLE:
        return None
    return next((g for g in INT4_GROUP_SIZES if linear.in_features % g == 0), None)


class Int4Linear(QuantizedLinear):
    """Asymmetric int4 weights in groups of `group_size` input channels, packed for the CPU int4 kernel."""

    def __init__(self, linear: nn.Linear, group_size: int, compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size, self.compute_dtype = group_size, compute_dtype
        n, k = linear.weight.shape
        groups = linear.weight.detach().float().reshape(n, k // group_size, group_size)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        scale = ((high - low) / 15).clamp(min=1e-12)  # (n, k/g, 1)
        q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.int32).reshape(n, k)  # 0..15
        zero = low + 8 * scale  # tinygemm: w = (q - 8) * scale + zero
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        # (k/g, n, 2): each group's scale and zero, in the kernel's order
        self.register_buffer("scale_and_zero", torch.cat([scale, zero], -1).transpose(0, 1).contiguous()
                             .to(compute_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(compute_dtype))

    def dequantized(self) -> torch.Tensor:
        """The (out, in) weight the int4 values stand for, in the compute dtype. The kernel's layout (torch 2.14):
        for each block of 64 output rows and each input column, 32 bytes whose low nibbles are rows 0-31 and
        high nibbles rows 32-63 (tests/mmllm/compress/test_packed.py holds it to the kernel's own products)."""
        n, k, g = self.out_features, self.in_features, self.group_size
        if n % INT4_BLOCK:  # a tail block is laid out otherwise: let the kernel read it (x = I gives W^T)
            eye = torch.eye(k, dtype=self.compute_dtype)
            return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, g, self.scale_and_zero).t()
        packed = self.packed.view(torch.uint8).reshape(n // INT4_BLOCK, k, INT4_BLOCK // 2)
        q = torch.cat([packed & 15, packed >> 4], -1).transpose(1, 2).reshape(n, k // g, g)  # (n, k/g, g)
        scale, zero = self.scale_and_zero.transpose(0, 1).unsqueeze(-2).unbind(-1)  # (n, k/g, 1) each
        return ((q.to(self.compute_dtype) - 8) * scale + zero).reshape(n, k)

    def kernel(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, self.group_size, self.scale_and_zero)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of "
                f"{self.group_size} x {self.compute_dtype}")
