"""The FLOP formula (mmllm.model.flops, behind MFU and fit's model summary) equals torch's FLOP counter on a forward pass."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from mmllm.config import VLMConfig
from mmllm.model.flops import forward_flops
from mmllm.model import VLM

# torch counts SDPA's CUDA kernels but not the CPU one; counted here with torch's own formula (full T x T, as ours).
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                 lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}


@pytest.mark.parametrize("fields", [{}, {"pixel_shuffle": 2}], ids=["tiny", "pixel-shuffle"])
def test_forward_flops_equal_torchs_flop_counter(fields):
    config = VLMConfig.from_preset("tiny", lm={"n_layers": 2}, vision={"n_layers": 2}, **fields)
    model = VLM(config).eval()
    length = 96
    filler = 5 if config.image_token_id != 5 else 6
    input_ids = torch.full((2, length), filler)
    input_ids[:, 1:1 + config.tokens_per_image] = config.image_token_id
    pixels = torch.rand(2, 3, config.vision.image_size, config.vision.image_size)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter, torch.no_grad():
        model(input_ids=input_ids, pixel_values=pixels, image_counts=torch.tensor([1, 1]))
    assert counter.get_total_flops() == forward_flops(config, batch_size=2, seq_len=length, n_images=2)
