"""LoRA and QLoRA layers (mmllm.model.lora) against their definitions: a fresh adapter changes nothing, gradients
reach only the adapters, merged weights give the unmerged logits, adapters under an int8 or NF4 base get the
gradients they would get under the dequantised float base, and rsLoRA's scaling is PEFT's."""

from __future__ import annotations

import pytest
import torch
from tiny_models import images, prompt, tiny_model, tiny_text_model

from mmllm.model.lora import LLAMA_TARGETS, LoRAConfig, LoRALinear, add_lora, lora_modules, merge_lora


def batch(model, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, model.config.lm.vocab_size, (2, length), generator=g)


def train_adapters(model, steps: int = 1) -> None:
    """Move every adapter off B = 0 (a few SGD steps on a random batch), so merge tests test something."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    ids = batch(model)
    for _ in range(steps):
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        optimizer.step()


def test_a_fresh_adapter_leaves_the_logits_identical_to_the_base():
    model = tiny_model()
    ids = batch(model)
    with torch.no_grad():
        before = model(ids).logits
        names = add_lora(model, LoRAConfig(rank=4, alpha=8))
        after = model(ids).logits
    assert len(names) == 2 * len(LLAMA_TARGETS) and torch.equal(before, after)


def test_base_names_stay_and_only_the_adapters_require_gradients():
    model = tiny_model()
    before = set(model.state_dict())
    add_lora(model, LoRAConfig(rank=4, alpha=8, modules=["lm"]))
    after = set(model.state_dict())
    assert before <= after  # every base name is still there, under the same name
    assert all(".lora_A." in n or ".lora_B." in n for n in after - before)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in after - before}
    ids = batch(model)
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is None for name, p in model.named_parameters() if name not in trainable)
    assert all(p.grad is not None for name, p in model.named_parameters() if name in trainable)


def test_merged_weights_give_the_unmerged_logits():
    model = tiny_model()
    add_lora(model, LoRAConfig(rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"], modules=["lm", "vision"]))
    for layer in lora_modules(model).values():  # every B off zero, the vision tower's too (text never trains it)
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    # (2, 4 + 12): one image block, then text per row; the vision adapters act on the image positions
    ids = torch.stack([prompt(model, 12, 1, seed=1), prompt(model, 12, 1, seed=2)])
    pixel_values, counts = images(2), torch.tensor([1, 1])
    with torch.no_grad():
        unmerged = model(ids, pixel_values, counts).logits
        without_vision = {name: layer.lora_B.weight.clone() for name, layer in lora_modules(model).items()
                          if name.startswith("vision.")}
        for name in without_vision:
            model.get_submodule(name).lora_B.weight.zero_()
        assert (model(ids, pixel_values, counts).logits - unmerged).abs().max() > 1e-3  # they move the logits
        for name, weight in without_vision.items():
            model.get_submodule(name).lora_B.weight.copy_(weight)
        count = merge_lora(model)
        merged = model(ids, pixel_values, counts).logits
    assert count == 3 * 2 + 2 * 2  # LM: q, v, down in 2 layers; vision: q, v in 2 layers (no down_proj there)
    assert not lora_modules(model) and len(without_vision) == 2 * 2
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)


@pytest.mark.parametrize("base", ["int8", "nf4"])
def test_adapter_gradients_under_a_quantised_base_equal_those_under_its_dequantised_float_base(base):
    if base == "nf4":
        pytest.importorskip("torchao")
    model, _ = tiny_text_model(dim=256)
    config = LoRAConfig(rank=8, alpha=16, base=base)
    add_lora(model, config)
    train_adapters(model)  # B != 0, so A's gradient is not zero
    reference, _ = tiny_text_model(dim=256)
    add_lora(reference, LoRAConfig(rank=8, alpha=16))
    with torch.no_grad():  # the reference: float weights equal to the quantised ones, the same adapters
        for (name, ours), (_, theirs) in zip(lora_modules(model).items(), lora_modules(reference).items()):
            theirs.weight.copy_(ours.base_weight())
            theirs.lora_A.weight.copy_(ours.lora_A.weight)
            theirs.lora_B.weight.copy_(ours.lora_B.weight)
    for m in (model, reference):
        m.zero_grad()
        ids = batch(m, seed=1)
        m(ids, labels=ids).loss.backward()
    for (name, ours), (_, theirs) in zip(lora_modules(model).items(), lora_modules(reference).items()):
        assert ours.weight is None or not ours.weight.requires_grad
        torch.testing.assert_close(ours.lora_A.weight.grad, theirs.lora_A.weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ours.lora_B.weight.grad, theirs.lora_B.weight.grad, rtol=1e-4, atol=1e-6)


def test_a_quantised_base_holds_fewer_bytes_than_the_float_one():
    pytest.importorskip("torchao")
    sizes = {}
    for base in ("float", "int8", "nf4"):
        model, _ = tiny_text_model(dim=256)
        add_lora(model, LoRAConfig(rank=8, alpha=16, base=base))
        layer = next(iter(lora_modules(model).values()))
        stored = layer.weight_int8 if base == "int8" else layer.weight
        if base == "nf4":  # the packed 4-bit codes and their scales
            inner = [getattr(stored, name) for name in stored.__tensor_flatten__()[0]]
            sizes[base] = sum(t.numel() * t.element_size() for t in inner)
        else:
            sizes[base] = stored.numel() * stored.element_size()
    assert sizes["int8"] * 4 == sizes["float"] and sizes["nf4"] < sizes["int8"]


@pytest.mark.parametrize("rslora", [False, True])
def test_a_lora_layer_computes_what_peft_computes_with_the_same_weights(rslora):
    """PEFT's LoRA layer as the reference: scaling alpha / r, or alpha / sqrt(r) with rsLoRA."""
    peft = pytest.importorskip("peft")

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = torch.nn.Linear(12, 10)

    torch.manual_seed(0)
    reference = peft.get_peft_model(One(), peft.LoraConfig(r=4, lora_alpha=16, use_rslora=rslora,
                                                            target_modules=["q_proj"], init_lora_weights=False))
    theirs = reference.base_model.model.q_proj
    ours = LoRALinear(theirs.base_layer, LoRAConfig(rank=4, alpha=16, rslora=rslora))
    with torch.no_grad():
        ours.lora_A.weight.copy_(theirs.lora_A["default"].weight)
        ours.lora_B.weight.copy_(theirs.lora_B["default"].weight)
    assert ours.scaling == theirs.scaling["default"] == (8.0 if rslora else 4.0)
    x = torch.randn(3, 12)
    torch.testing.assert_close(ours(x), theirs(x))


def test_bad_options_are_refused_naming_the_option():
    with pytest.raises(ValueError, match="model.lora.rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="model.lora.modules"):
        LoRAConfig(modules=["decoder"])
    model, _ = tiny_text_model()
    with pytest.raises(ValueError, match="model.lora.modules names 'vision', which this model does not have"):
        add_lora(model, LoRAConfig(modules=["vision"]))
    with pytest.raises(ValueError, match="name no linear layer"):
        add_lora(model, LoRAConfig(targets=["qkv"]))


def test_a_lora_linear_is_the_base_linear_plus_the_scaled_update():
    base = torch.nn.Linear(6, 5)
    layer = LoRALinear(base, LoRAConfig(rank=2, alpha=3))
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 6)
    expected = base(x) + 1.5 * x @ layer.lora_A.weight.t() @ layer.lora_B.weight.t()
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("base", ["float", "int8", "nf4"])
def test_the_merged_state_dict_loads_into_a_plain_model_that_answers_as_the_adapted_one(base):
    if base == "nf4":
        pytest.importorskip("torchao")
    from mmllm.model import VLM
    from mmllm.model.lora import merged_state_dict

    model, _ = tiny_text_model(dim=256)
    add_lora(model, LoRAConfig(rank=4, alpha=8, base=base))
    train_adapters(model)
    plain = VLM(model.config).eval()
    plain.load_state_dict(merged_state_dict(model))  # strict: no adapter or quantisation tensor left over
    ids = batch(model)
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits, rtol=0, atol=1e-4)
    assert lora_modules(model)  # the adapted model itself is unchanged
