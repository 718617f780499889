"""model.image_positions rows_cols: a learned row and column vector on every image token, in the token's content."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_models import tiny_config

from mmllm.config import VLMConfig
from mmllm.formats.hf_idefics3 import not_exportable
from mmllm.model import VLM
from mmllm.train.optim import param_groups


def pair(seed: int = 0) -> tuple[VLM, VLM]:
    """The same weights without and with image positions."""
    torch.manual_seed(seed)
    plain = VLM(tiny_config()).eval()
    placed = VLM(dataclasses.replace(tiny_config(), image_positions="rows_cols")).eval()
    missing, unexpected = placed.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["projector.col_embed", "projector.row_embed"] and not unexpected
    return plain, placed


def test_config_round_trips_and_refuses_unknown_values():
    config = dataclasses.replace(tiny_config(), image_positions="rows_cols")
    assert VLMConfig.from_dict(config.to_dict()).image_positions == "rows_cols"
    assert VLMConfig.from_dict({k: v for k, v in tiny_config().to_dict().items() if k != "image_positions"}
                               ).image_positions == "none"  # model folders written before the option
    with pytest.raises(ValueError, match="image_positions"):
        VLMConfig.from_dict({**tiny_config().to_dict(), "image_positions": "2d"})


def test_a_fresh_model_equals_one_without_and_each_token_gets_its_row_and_column():
    plain, placed = pair()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(placed.encode_images(pixels), plain.encode_images(pixels))  # zero at the start
        side = placed.projector.row_embed.size(0)
        assert side * side == placed.config.tokens_per_image  # 2 x 2 grid of image tokens
        placed.projector.row_embed.copy_(torch.arange(side)[:, None].float().expand(side, 32))
        placed.projector.col_embed.copy_(10 * torch.arange(side)[:, None].float().expand(side, 32))
        shift = placed.encode_images(pixels) - plain.encode_images(pixels)  # (2, 4, 32)
    expected = torch.tensor([0.0, 10.0, 1.0, 11.0])  # reading order: (0,0), (0,1), (1,0), (1,1)
    torch.testing.assert_close(shift[..., 0], expected.expand(2, 4))


def test_gradients_reach_the_positions_and_they_train_with_adamw_without_decay():
    _, placed = pair()
    ids = torch.tensor([[4] + [placed.config.image_token_id] * 4 + [5, 6, 7]])
    out = placed(ids, pixel_values=torch.randn(1, 3, 32, 32), labels=ids)
    out.loss.backward()
    assert placed.projector.row_embed.grad.abs().sum() > 0 and placed.projector.col_embed.grad.abs().sum() > 0
    groups = param_groups(placed.projector.named_parameters(), lr=1e-3, weight_decay=0.1, algorithm="muon",
                          name="projector")
    no_decay = next(g for g in groups if g["name"] == "projector_no_decay")["params"]
    assert any(p is placed.projector.row_embed for p in no_decay)
    assert not any(p is placed.projector.row_embed for g in groups if g["muon"] for p in g["params"])


def test_exporters_refuse_it_by_name():
    config = dataclasses.replace(tiny_config(), projector="linear", image_positions="rows_cols")
    assert "image_positions none" in not_exportable(config)
