"""Per-block training options: activation checkpointing recomputes the same activations (equal gradients, and a
fit with it gives the losses of one without), and regionally compiled blocks give the eager gradients from one
compiled graph shared by the blocks of a kind."""

from __future__ import annotations

import shutil

import pytest
import torch
from fit_helpers import column, fit_config, read_metrics, write_config

from mmllm.cli.main import main


def _gradients(model, prompt, pixels) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model.train()
    model(prompt, pixels, labels=prompt).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_gives_the_gradients_of_keeping_activations(make_model, make_prompt, make_images):
    model = make_model()
    prompt, pixels = make_prompt(model, 10, 2)[None], make_images(2)
    kept = _gradients(model, prompt, pixels)
    model.set_activation_checkpointing(True)
    recomputed = _gradients(model, prompt, pixels)
    assert kept.keys() == recomputed.keys() and any("vision" in name for name in kept)
    for name, grad in kept.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_blocks_give_the_eager_gradients_from_one_graph_per_block_kind(make_model, make_prompt, make_images):
    import torch._dynamo

    model = make_model()
    model.vision.requires_grad_(False)  # the decoder blocks' graphs are the ones timed in training; keep it short
    prompt = make_prompt(model, 10, 0)[None]
    eager = _gradients(model, prompt, None)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    for block in model.lm.layers:
        block.compile()
    compiled = _gradients(model, prompt, None)
    assert len(model.lm.layers) > 1 and counters["stats"]["unique_graphs"] == 1  # compiled once, run by every block
    for name, grad in eager.items():
        torch.testing.assert_close(compiled[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_a_fit_with_activation_checkpointing_gives_the_losses_of_one_without(shapes_data, tmp_path):
    losses = {}
    for name, checkpointing in (("kept", False), ("recomputed", True)):
        run = tmp_path / name
        run.mkdir()
        config = fit_config(shapes_data, run, trainer={"max_steps": 4, "limit_val_batches": 0})
        config["model"] = {**config["model"], "activation_checkpointing": checkpointing}
        assert main(["fit", "--config", str(write_config(config, run / "config.yaml"))]) == 0
        losses[name] = [value for _, value in column(read_metrics(run), "train/loss")]
    assert len(losses["kept"]) == 4
    assert losses["recomputed"] == pytest.approx(losses["kept"], rel=1e-5)
