"""The ViT at its configured image size and at other sizes (bicubic-interpolated position embeddings)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmllm.config import VisionConfig
from mmllm.model.vision import VisionEncoder, sincos_grid


def test_vision_runs_at_another_image_size_with_interpolated_positions(make_model, make_images):
    vision = make_model().vision  # configured for 32 px, 8 px patches: a 4 x 4 grid
    with torch.no_grad():
        assert vision(make_images(2, size=32)).shape == (2, 16, 24)
        assert vision(make_images(2, size=48)).shape == (2, 36, 24)
        table = vision.embeddings.position_embedding.weight
        assert vision.embeddings.positions(4, 4) is table
        grid = table.T.reshape(1, 24, 4, 4)
        expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
        torch.testing.assert_close(vision.embeddings.positions(6, 6), expected.reshape(24, 36).T)


def test_fresh_vision_positions_code_row_and_column_as_sines_and_cosines():
    config = VisionConfig(image_size=48, patch_size=8, dim=32, n_layers=1, n_heads=2, mlp_dim=32)
    vision = VisionEncoder(config)
    vision.init_weights()
    table = vision.embeddings.position_embedding.weight.detach()  # (36, 32), reading order over a 6 x 6 grid
    torch.testing.assert_close(table, sincos_grid(6, 32))
    grid = table.reshape(6, 6, 32)
    # the first half depends only on the row, the second only on the column
    assert torch.equal(grid[:, 0, :16], grid[:, 5, :16]) and torch.equal(grid[0, :, 16:], grid[5, :, 16:])
    torch.testing.assert_close(grid[2, 3, 0], torch.sin(torch.tensor(2.0)))  # row 2, lowest frequency's sine
    torch.testing.assert_close(grid[2, 3, 24], torch.cos(torch.tensor(3.0)))  # column 3, lowest frequency's cosine
    assert len({tuple(row.tolist()) for row in table}) == 36  # every patch has its own code
