"""The optimiser choices: Muon on hidden matrices (AdamW for the rest) as one optimiser, and the time-aware schedule."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from mmllm.config import VLMConfig
from mmllm.model import VLM
from mmllm.train.module import VLMModule, warmup_cosine
from mmllm.train.optim import MuonWithAdamW, build_optimizer, param_groups, uses_muon


def micro_vlm() -> VLM:
    config = VLMConfig.from_preset("tiny")
    config.lm.dim, config.lm.n_heads, config.lm.n_kv_heads, config.lm.mlp_dim, config.lm.head_dim = 32, 4, 2, 48, 8
    config.lm.n_layers, config.lm.vocab_size = 2, 64
    config.vision.dim, config.vision.n_heads, config.vision.mlp_dim, config.vision.n_layers = 16, 2, 32, 1
    config.vision.image_size, config.lm.tie_embeddings = 32, False
    torch.manual_seed(0)
    return VLM(config)


def groups_of(model: VLM, algorithm: str) -> list[dict]:
    groups = []
    for part in ("vision", "projector", "lm"):
        groups += param_groups(getattr(model, part).named_parameters(), lr=1e-2, weight_decay=0.1,
                               algorithm=algorithm, name=part)
    return groups


def test_muon_takes_the_hidden_matrices_and_adamw_everything_else_once():
    model = micro_vlm()
    groups = groups_of(model, "muon")
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in groups if g["muon"] for p in g["params"]]
    adamw = [names[id(p)] for g in groups if not g["muon"] for p in g["params"]]
    assert sorted(muon + adamw) == sorted(names.values())  # every parameter, exactly once
    assert "lm.layers.0.self_attn.q_proj.weight" in muon and "projector.fc1.weight" in muon
    assert "vision.encoder.layers.0.mlp.fc1.weight" in muon
    for name in ("lm.embed_tokens.weight", "lm.lm_head.weight", "vision.embeddings.patch_embedding.weight",
                 "vision.embeddings.position_embedding.weight", "lm.norm.weight", "projector.fc1.bias"):
        assert name in adamw
    assert all(p.ndim == 2 for g in groups if g["muon"] for p in g["params"])
    # AdamW alone: no Muon group, and the same decay split as before (matrices decay, the rest not)
    plain = groups_of(model, "adamw")
    assert not any(g["muon"] for g in plain)
    assert sum(len(g["params"]) for g in plain) == len(names)


def test_muon_update_of_an_ill_conditioned_gradient_is_orthogonalised():
    weight = torch.nn.Parameter(torch.zeros(32, 64))
    optimizer = build_optimizer([{"params": [weight], "lr": 1.0, "weight_decay": 0.0, "muon": True}], "muon",
                                betas=(0.9, 0.98), muon_momentum=0.0, fused=False)
    u, _, v = torch.linalg.svd(torch.randn(32, 64), full_matrices=False)
    gradient = u @ torch.diag(torch.logspace(0, -2, 32)) @ v  # singular values from 1 to 1e-2
    weight.grad = gradient
    optimizer.step()
    singular = torch.linalg.svdvals(weight.detach())
    assert singular.max() / singular.min() < 3  # every direction moved at a similar rate (gradient: 100x)
    assert torch.dot(weight.detach().flatten(), gradient.flatten()) < 0  # a descent direction


def test_muon_with_adamw_state_round_trips_and_continues_identically():
    model = micro_vlm()
    twin = copy.deepcopy(model)
    make = lambda m: build_optimizer(groups_of(m, "muon"), "muon", (0.9, 0.98), 0.95, fused=False)  # noqa: E731
    optimizer = make(model)
    assert isinstance(optimizer, MuonWithAdamW)

    def step(m, opt):
        ids = torch.randint(4, 64, (2, 12))
        out = m(ids, labels=ids)
        opt.zero_grad()
        out.loss.backward()
        opt.step()

    torch.manual_seed(1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(model, optimizer)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n]) and p.grad is not None
             and p.grad.abs().sum() > 0]
    assert any(uses_muon(n, p.ndim) for n, p in model.named_parameters() if n in moved)
    assert "lm.embed_tokens.weight" in moved  # the AdamW part steps too

    # A twin restored from the state dict continues exactly as the original does.
    twin.load_state_dict(model.state_dict())
    twin_optimizer = make(twin)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a checkpoint file
    for group in twin_optimizer.param_groups:  # a scheduler's change of rate reaches the inner optimisers
        group["lr"] = group["lr"] * 0.5
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * 0.5
    for m, opt in ((model, optimizer), (twin, twin_optimizer)):
        torch.manual_seed(2)
        step(m, opt)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="Muon"):
        twin_optimizer.load_state_dict(torch.optim.AdamW(twin.parameters()).state_dict())


def test_cosine_follows_time_when_time_is_further_along_than_steps():
    spent = {"fraction": 0.0}
    schedule = warmup_cosine(10, 1000, 0.1, time_fraction=lambda: spent["fraction"])
    assert schedule(4) == pytest.approx(0.5)  # warmup is counted in steps
    assert schedule(10) == pytest.approx(1.0)
    spent["fraction"] = 1.0  # time is up: the low end, though few steps were taken
    assert schedule(20) == pytest.approx(0.1)
    spent["fraction"] = 0.5
    assert schedule(20) == pytest.approx(0.1 + 0.9 * 0.5)  # half way in time
    assert schedule(1000) == pytest.approx(0.1)  # steps further along than time
    steps_only = warmup_cosine(10, 1000, 0.1)
    assert steps_only(505) == pytest.approx(0.1 + 0.9 * 0.5)


def test_schedule_by_time_without_max_time_is_refused():
    import lightning as L

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="max_time"):
        VLMModule._time_fraction(SimpleNamespace(trainer=trainer))
    timed = L.Trainer(max_time="00:00:10:00", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    fraction = VLMModule._time_fraction(SimpleNamespace(trainer=timed))
    assert 0.0 <= fraction() < 0.01  # the clock has not started: nothing spent
