"""mmllm's Muon against torch.optim.Muon, the reference: the same steps in bf16, the same state dict, and a float32
Newton-Schulz that agrees with it to bf16's precision."""

import pytest
import torch

from mmllm.train.muon import Muon, cpu_has_bf16_matmul, newton_schulz_dtype, orthogonalise


def matrices(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(24, 40), (40, 24), (16, 16)]  # wide, tall (transposed inside) and square
    return [torch.nn.Parameter(torch.randn(*shape, generator=generator)) for shape in shapes]


def run(optimizer_class, steps: int = 4, **options) -> list[torch.Tensor]:
    params = matrices(0)
    optimizer = optimizer_class(params, lr=0.02, weight_decay=0.1, momentum=0.9,
                                adjust_lr_fn="match_rms_adamw", **options)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()
    return [param.detach() for param in params], optimizer


@pytest.mark.parametrize("nesterov", [True, False])
def test_bf16_steps_equal_torch_muon(nesterov):
    ours, _ = run(Muon, nesterov=nesterov, ns_dtype="bfloat16")
    reference, _ = run(torch.optim.Muon, nesterov=nesterov)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_float32_newton_schulz_agrees_with_the_reference_to_bf16_precision():
    ours, _ = run(Muon, ns_dtype="float32")
    reference, _ = run(torch.optim.Muon)
    start = matrices(0)
    for a, b, s in zip(ours, reference, start):
        moved = (b - s).norm()
        assert (a - b).norm() < 0.05 * moved  # the updates agree to a few percent (bf16 has 8 bits of mantissa)


def test_float32_orthogonalisation_flattens_the_spectrum():
    u, _, v = torch.linalg.svd(torch.randn(32, 64), full_matrices=False)
    ill = u @ torch.diag(torch.logspace(0, -2, 32)) @ v  # singular values 1 .. 1e-2
    singular = torch.linalg.svdvals(orthogonalise(ill, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32))
    assert singular.min() > 0.5 and singular.max() < 1.5  # Muon's quintic: roughly U V^T


def test_state_dicts_move_between_torch_muon_and_ours():
    _, reference = run(torch.optim.Muon)
    ours = Muon(matrices(0), lr=0.02, weight_decay=0.1, momentum=0.9, adjust_lr_fn="match_rms_adamw")
    ours.load_state_dict(reference.state_dict())
    for a, b in zip(ours.state.values(), reference.state.values()):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=0, atol=0)
    assert reference.state_dict()["param_groups"][0].keys() == ours.state_dict()["param_groups"][0].keys()


def test_dtype_choice_and_refusals():
    assert newton_schulz_dtype("float32", torch.device("cuda")) == torch.float32
    assert newton_schulz_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert newton_schulz_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32)
    with pytest.raises(ValueError, match="ns_dtype"):
        Muon(matrices(0), ns_dtype="half")
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


def test_matrices_of_one_shape_orthogonalised_together_equal_one_at_a_time():
    from mmllm.train.muon import orthogonalise_all

    generator = torch.Generator().manual_seed(2)
    shapes = [(24, 40), (24, 40), (40, 24), (16, 16), (16, 16)]  # two wide of a shape, one tall of it, two square
    updates = [torch.randn(*shape, generator=generator) for shape in shapes]
    together = orthogonalise_all(updates, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)
    for update, result in zip(updates, together):
        alone = orthogonalise(update, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)
        assert result.shape == update.shape
        torch.testing.assert_close(result, alone, rtol=1e-5, atol=1e-5)


def test_a_step_over_same_shape_matrices_agrees_with_torch_muon():
    params = [torch.nn.Parameter(p.detach().clone()) for p in matrices(0) for _ in range(2)]  # each shape twice
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = Muon(params, lr=0.02, weight_decay=0.1, momentum=0.9, adjust_lr_fn="match_rms_adamw", ns_dtype="float32")
    theirs = Muon(reference, lr=0.02, weight_decay=0.1, momentum=0.9, adjust_lr_fn="match_rms_adamw",
                  ns_dtype="float32")
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        for a, b in zip(params, reference):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        ours.step()
        for b in reference:  # the reference: one matrix per step call, so no two share a batch
            for group in theirs.param_groups:
                group["params"], kept = [b], group["params"]
            theirs.step()
            for group in theirs.param_groups:
                group["params"] = kept
    for a, b in zip(params, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
