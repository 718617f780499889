"""Structured pruning (mmllm.compress.pruning, `mmllm prune`): a pruned model computes what the full model computes with
the cut heads, channels and layers switched off; importance finds the structures that contribute nothing; the
pruned folder is an ordinary model folder."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import tiny_model

from mmllm.errors import UsageError
from mmllm.formats.model_folder import read_model_config, save_model_folder
from mmllm.compress.pruning import PrunePlan, lm_parameters, measure_importance, plan, prune


def _model():
    return tiny_model(seed=2, n_heads=4, n_kv_heads=2, n_layers=3)  # 2 query heads per key/value head


def _batches(model, n=2, seed=0):
    from tiny_models import images, prompt

    rows = torch.stack([prompt(model, 12, n_images=1, seed=seed + i) for i in range(4)])
    mask = torch.ones_like(rows)
    mask[1, -3:] = 0  # right padding on one row
    labels = rows.masked_fill(mask == 0, -100)
    labels[:, :model.config.tokens_per_image] = -100
    return [{"input_ids": rows, "attention_mask": mask, "labels": labels, "pixel_values": images(4, seed=seed + b)}
            for b in range(n)]


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits


def _switched_off(model, keep: PrunePlan):
    """The reference: the full model with every cut head's o_proj columns and cut channel's down_proj column
    zeroed, and cut layers taken out of the stack."""
    model = copy.deepcopy(model)
    c = model.config.lm
    with torch.no_grad():
        for index, layer in enumerate(model.lm.layers):
            if index not in keep.layers:
                continue
            heads, channels = keep.heads[keep.layers.index(index)], keep.channels[keep.layers.index(index)]
            for h in set(range(c.n_heads)) - set(heads):
                layer.self_attn.o_proj.weight[:, h * c.head_dim:(h + 1) * c.head_dim] = 0
            for ch in set(range(c.mlp_dim)) - set(channels):
                layer.mlp.down_proj.weight[:, ch] = 0
    model.lm.layers = torch.nn.ModuleList(model.lm.layers[i] for i in keep.layers)
    return model


def test_pruning_nothing_leaves_the_logits_identical_and_the_config_round_trips(tmp_path):
    model = _model()
    batch = _batches(model)[0]
    importance = measure_importance(model, [batch])
    pruned = prune(model, plan(model.config, importance, 0.0, 0.0, 0))
    assert torch.equal(_logits(pruned, batch), _logits(model, batch))
    assert pruned.config == model.config

    cut = prune(model, plan(model.config, importance, 0.5, 0.25, 1))
    from tiny_models import IMAGE_TOKEN
    from tokenizers import Tokenizer, models

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(cut.config.lm.vocab_size)}, unk_token="t0"))
    tokenizer.add_special_tokens(["<image>"])
    assert cut.config.image_token_id == IMAGE_TOKEN
    save_model_folder(cut, tokenizer, tmp_path / "cut")
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert (config["lm"]["n_layers"], config["lm"]["n_heads"], config["lm"]["mlp_dim"]) == (2, 2, 48)
    assert read_model_config(tmp_path / "cut") == cut.config


@pytest.mark.parametrize("shares", [(0.5, 0.0, 0), (0.0, 0.5, 0), (0.5, 0.25, 1), (0.0, 0.0, 2)])
def test_a_pruned_model_computes_the_full_model_with_the_cut_parts_switched_off(shares):
    model = _model()
    batches = _batches(model)
    keep = plan(model.config, measure_importance(model, batches), *shares)
    pruned = prune(model, keep)
    torch.testing.assert_close(_logits(pruned, batches[0]), _logits(_switched_off(model, keep), batches[0]),
                               rtol=1e-5, atol=1e-5)
    assert lm_parameters(pruned) < lm_parameters(model) or shares == (0.0, 0.0, 0)


@pytest.mark.parametrize("method", ["activation", "gradient"])
def test_importance_ranks_a_head_and_a_channel_that_contribute_nothing_last(method):
    model = _model()
    c = model.config.lm
    with torch.no_grad():
        attention, mlp = model.lm.layers[1].self_attn, model.lm.layers[1].mlp
        attention.o_proj.weight[:, 3 * c.head_dim:4 * c.head_dim] = 0  # head 3 writes nothing
        mlp.down_proj.weight[:, 5] = 0  # channel 5 writes nothing
    importance = measure_importance(model, _batches(model), method)
    assert importance.heads[1, 3] == 0 and (importance.heads[1, :3] > 0).all()
    assert importance.channels[1, 5] == 0 and (importance.channels[1].sort().values[1] > 0)
    keep = plan(model.config, importance, 0.5, 1 / c.mlp_dim, 0)
    assert 3 not in keep.heads[1] and 2 in keep.heads[1]  # its group's other head stays
    assert 5 not in keep.channels[1] and len(keep.channels[1]) == c.mlp_dim - 1


def test_a_layer_that_leaves_the_stream_unchanged_is_cut_first():
    model = _model()
    with torch.no_grad():
        model.lm.layers[1].self_attn.o_proj.weight.zero_()
        model.lm.layers[1].mlp.down_proj.weight.zero_()
    importance = measure_importance(model, _batches(model))
    assert abs(importance.layers[1]) < 1e-6 and (importance.layers[[0, 2]] > 1e-3).all()
    assert plan(model.config, importance, 0.0, 0.0, 1).layers == [0, 2]


def test_shares_that_leave_nothing_are_refused():
    model = _model()
    importance = measure_importance(model, _batches(model, n=1))
    with pytest.raises(UsageError, match=r"attention heads to prune must be in \[0, 1\)"):
        plan(model.config, importance, 1.0, 0.0)
    with pytest.raises(UsageError, match=r"\[0, 1\)"):
        plan(model.config, importance, 0.0, 1.0)
    with pytest.raises(UsageError, match="--layers"):
        plan(model.config, importance, 0.0, 0.0, 3)
