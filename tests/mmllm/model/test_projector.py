"""Pixel shuffle keeps spatial neighbourhoods together; the projector makes tokens_per_image LM-width tokens."""

from __future__ import annotations

import torch

from mmllm.config import VLMConfig
from mmllm.model import VLM
from mmllm.model.vlm import pixel_shuffle


def test_pixel_shuffle_concatenates_each_2x2_block_of_patches():
    g, d = 4, 3
    grid = torch.arange(g * g).float()  # patch (row, col) holds row * g + col in every channel
    patches = grid[None, :, None].expand(1, g * g, d)  # (1, 16, 3)
    tokens = pixel_shuffle(patches, 2)  # (1, 4, 12)
    assert tokens.shape == (1, 4, 12)
    for token, (row, col) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):  # output grid in reading order
        expected = [row * g + col, row * g + col + 1, (row + 1) * g + col, (row + 1) * g + col + 1]
        assert tokens[0, token].view(4, d)[:, 0].tolist() == expected
        per_patch = tokens[0, token].view(4, d)
        assert (per_patch == per_patch[:, :1]).all()  # a patch's channels stay together


def test_pixel_shuffle_factor_3_matches_a_loop_over_blocks():
    g, d, r = 6, 5, 3
    patches = torch.randn(2, g * g, d)
    tokens = pixel_shuffle(patches, r)
    as_grid = patches.view(2, g, g, d)
    s = g // r
    for i in range(s):
        for j in range(s):
            block = as_grid[:, i * r : (i + 1) * r, j * r : (j + 1) * r]  # (2, r, r, d)
            torch.testing.assert_close(tokens[:, i * s + j], block.reshape(2, r * r * d))


def test_image_token_count_is_image_size_over_patch_over_shuffle_squared():
    config = VLMConfig.from_preset("tiny")
    model = VLM(config).eval()
    with torch.no_grad():
        image_tokens = model.encode_images(torch.randn(3, 3, 64, 64))
    side = config.vision.image_size // config.vision.patch_size // config.pixel_shuffle
    assert image_tokens.shape == (3, side**2, config.lm.dim)
    assert config.tokens_per_image == side**2 == 16
