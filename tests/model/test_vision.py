"""The ViT at its configured image size and at other sizes (bicubic-interpolated position embeddings)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
