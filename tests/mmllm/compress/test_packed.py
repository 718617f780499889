"""The CPU inference layers over torch's packed kernels (mmllm.compress.packed): each one against the float layer
it came from, the decode path (the packed GEMV kernel, a few rows) against the prompt path (a dequantised GEMM,
many rows), and the int4 layout the dequantisation reads against the kernel's own products."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmllm.compress.packed import GEMV_ROWS, Int4Linear, Int8Linear, int4_group_size


def linear(n_in: int, n_out: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out)


@pytest.mark.parametrize("n_out", [64, 192, 80])  # whole 64-row blocks, and a tail block of 16
def test_int4_dequantisation_reads_the_kernels_layout(n_out):
    layer = Int4Linear(linear(96, n_out), group_size=32)
    eye = torch.eye(96, dtype=torch.bfloat16)
    with torch.inference_mode():
        from_kernel = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, layer.packed, 32, layer.scale_and_zero).t()
        # the kernel multiplies in float32 and rounds its output to bfloat16 once; ours rounds (q - 8) * scale
        torch.testing.assert_close(layer.dequantized().float(), from_kernel.float(), rtol=2**-7, atol=1e-3)


@pytest.mark.parametrize("make", [lambda l: Int8Linear(l), lambda l: Int4Linear(l, int4_group_size(l))],
                         ids=["int8", "int4"])
def test_the_decode_kernel_and_the_prompt_gemm_compute_the_same_product(make):
    layer = make(linear(128, 192))
    x = torch.randn(GEMV_ROWS + 4, 128)
    with torch.inference_mode():
        many = layer(x)  # above GEMV_ROWS: the dequantised GEMM
        few = torch.cat([layer(x[i:i + 1]) for i in range(len(x))])  # the packed kernel, row by row
    assert many.dtype == few.dtype == torch.float32 and many.shape == (GEMV_ROWS + 4, 192)
    scale = (x.abs() @ layer.dequantized().float().abs().T)  # bfloat16 rounding of the sums, relative to them
    assert ((many - few).abs() <= 3 * 2.0**-8 * scale + 1e-4).all()


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_layers_stay_within_their_grids_rounding(bits):
    reference = linear(128, 64, seed=1)
    layer = Int8Linear(reference) if bits == 8 else Int4Linear(reference, 64)
    w = reference.weight.detach()
    if bits == 8:
        step = (w.abs().amax(1, keepdim=True) / 127).expand_as(w)
    else:
        groups = w.view(64, 2, 64)
        step = ((groups.amax(2) - groups.amin(2)) / 15).repeat_interleave(64, dim=1)
    x = torch.randn(3, 128)
    with torch.inference_mode():
        error = (layer(x) - reference(x)).abs()
    bound = x.abs() @ step.T / 2 + 3 * 2.0**-8 * (x.abs() @ w.abs().T) + 2.0**-8 * reference.bias.abs()
    assert (error <= bound * 1.001 + 1e-5).all()


def test_int8_rows_of_a_width_the_kernel_cannot_take_use_the_gemm():
    layer = Int8Linear(linear(24, 48))  # several rows of width 24 crash _weight_int8pack_mm in torch 2.14
    with torch.inference_mode():
        out = layer(torch.randn(5, 24))
    assert out.shape == (5, 48) and torch.isfinite(out).all()
