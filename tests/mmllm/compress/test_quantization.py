"""Quantised inference (mmllm.compress.quantization) and quantised model folders (mmllm.compress.quantized_weights):
every method against the float model it came from, the measured choice and its cache (the choosing rule itself:
test_quantization_choice.py), the stored int grid, the loader's checks, and `mmllm export --quantize` /
`mmllm ask --quantize` as a user runs them."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from inference_helpers import run_mmllm
from safetensors.torch import load_file, save_file

from mmllm.cli.main import main
from mmllm.errors import UsageError
from mmllm.model.generation import generate
from mmllm.compress.quantization import METHODS, machine_key, plan_layers, quantize
from mmllm.compress.quantized_weights import pack, unpack

@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLLM_CACHE_DIR", str(tmp_path / "cache"))


def _runs(method: str) -> bool:
    """Whether this machine has the kernel (torchao builds differ: DA8W4 needs its C++ op)."""
    try:
        quantize(_model(), METHODS[method].bits, method)
        return True
    except UsageError:  # "cannot run on this machine"
        return False


def _model():
    from tiny_models import tiny_model

    return tiny_model(seed=1)


def _logits(model, ids, pixels):
    with torch.inference_mode():
        return model(ids[None], pixel_values=pixels).logits.float()


def rounding_bound(x: torch.Tensor, w: torch.Tensor, method: str, group: int | None) -> torch.Tensor:
    """The most that rounding to the method's grids can move x @ w.T (rows of x, columns of the output), from the
    grids alone: half a weight step times sum |x| (int8: a row's max|w| / 127; int4: a group's range / 15),
    plus, where activations are quantised, half an activation step ((max x - min x) / 127, the coarsest of the
    libraries' per-tensor and per-token grids) times sum |w|, plus bfloat16 rounding where the kernel computes
    in it (2^-8 of sum |w x|, three times: input, scales, output)."""
    out, width = w.shape
    if METHODS[method].bits == 8:
        weight_step = (w.abs().amax(dim=1) / 127).expand(width, out).T  # (out, in)
    else:
        groups = w.view(out, width // group, group)
        weight_step = ((groups.amax(2) - groups.amin(2)) / 15).repeat_interleave(group, dim=1)
    bound = x.abs() @ weight_step.T / 2
    if "dynamic" in method:
        x_step = (x.amax() - x.amin()) / 127
        bound = bound + x_step / 2 * w.abs().sum(dim=1)
    if "int4" in method or "packed" in method:
        bound = bound + 3 * 2.0**-8 * (x.abs() @ w.abs().T)
    return bound


@pytest.mark.parametrize("method", list(METHODS))
def test_each_quantized_layer_stays_within_the_rounding_bound_of_its_grid(method):
    if method == "torchao-int8-dynamic-int4" and not _runs(method):
        pytest.skip("this torchao build has no DA8W4 CPU kernel")  # the only method allowed to be missing
    reference = reference_with_head(_model())
    model = copy.deepcopy(reference)
    report = quantize(model, METHODS[method].bits, method)
    layers, kept = plan_layers(reference, report.bits)
    assert report.layers == len(layers) and report.float_layers == kept and layers
    modules, originals = dict(model.named_modules()), dict(reference.named_modules())
    g = torch.Generator().manual_seed(0)
    for name, group in layers.items():
        w = originals[name].weight.detach()
        x = torch.randn(5, w.shape[1], generator=g)
        with torch.inference_mode():
            expected = originals[name](x)
            got = modules[name](x).float()
        assert type(modules[name]) is not torch.nn.Linear or type(modules[name].weight) is not torch.nn.Parameter
        error = (got - expected).abs()
        bound = rounding_bound(x, w, method, group) * 1.001 + 1e-5
        assert (error <= bound).all(), f"{name}: error {float(error.max())} > bound {float(bound.min())}"
    for name in kept:
        assert type(modules[name].weight) is torch.nn.Parameter and modules[name].weight.dtype == torch.float32


def reference_with_head(model):
    from mmllm.compress.quantization import untie_head

    model = copy.deepcopy(model)
    untie_head(model)
    return model


# Weight-only methods only: dynamic activation scales are measured over each call's tokens, so a prefill of the
# whole sequence and a one-token decode step round differently by design.
@pytest.mark.parametrize("method", ["torchao-int8-weight-only", "torchao-int4-weight-only", "torch-packed-int8",
                                    "torch-packed-int4"])
def test_quantized_kv_cache_decoding_equals_recomputation(method, make_prompt, make_images):
    model = _model()
    quantize(model, METHODS[method].bits, method)
    ids, pixels = make_prompt(model, 10, n_images=1), make_images(1)
    cached = generate(model, ids[None], pixel_values=pixels, max_new_tokens=6, stop_ids=[])
    sequence = ids.tolist()
    with torch.inference_mode():
        for _ in range(6):  # the whole sequence through the model at every step
            logits = model(torch.tensor([sequence]), pixel_values=pixels).logits
            sequence.append(int(logits[0, -1].argmax()))
    assert cached[0] == sequence[len(ids):]


def test_int4_keeps_layers_no_group_size_divides_and_names_them():
    model = reference_with_head(_model())
    layers, kept = plan_layers(model, 4)
    widths = {name: (m.in_features, m.out_features) for name, m in model.named_modules() if hasattr(m, "in_features")}
    assert kept and layers
    for name in kept:  # the tiny vision tower is 24 and 48 wide: no group of 32, 64 or 128 fits
        i, o = widths[name]
        assert i % 32 or o % 16
    for name, group in layers.items():
        assert widths[name][0] % group == 0 and widths[name][1] % 16 == 0
    assert plan_layers(model, 8) == ({name: None for name in widths}, [])


def test_auto_measures_an_int8_method_once_and_remembers_it_with_its_times(tmp_path):
    # real timings of the tiny model: which method wins is the machine's business (the rule is tested on scripted
    # timings in test_quantization_choice.py); what it chose is an int8 method and what it kept is what it measured
    model = _model()
    report = quantize(model, 8)
    assert not report.cached and METHODS[report.method].bits == 8 and report.layers
    assert "float32" in report.seconds and set(report.spread) == set(report.seconds)
    assert not any(type(m) is torch.nn.Linear and type(m.weight) is torch.nn.Parameter
                   for name, m in model.named_modules() if name in plan_layers(reference_with_head(_model()), 8)[0])
    cache = json.loads((tmp_path / "cache" / "quantize-choices.json").read_text())
    assert list(cache) == [machine_key(_model(), 8)]
    entry = cache[machine_key(_model(), 8)]
    assert entry["method"] == report.method and entry["measurements"] == 1
    assert {name: len(t) for name, t in entry["times"].items()} == {name: entry["rounds"] for name in report.seconds}
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:  # another thread count is another machine: its own measurement
        assert machine_key(_model(), 8) not in cache
    finally:
        torch.set_num_threads(threads)


def test_mistakes_are_refused_with_a_reason():
    with pytest.raises(UsageError, match="no int4 quantization method 'torch-dynamic-int8'"):
        quantize(_model(), 4, "torch-dynamic-int8")
    with pytest.raises(UsageError, match="float32"):
        quantize(_model().to(torch.bfloat16), 8, "torch-dynamic-int8")


# ----------------------------------------------------------------------------------------------------------
# The stored form


def test_int8_storage_rounds_each_weight_to_its_rows_grid():
    w = torch.randn(6, 40)
    stored = pack({"fc.weight": w}, {"fc": None}, 8)
    assert stored["fc.weight_int8"].dtype == torch.int8 and set(stored) == {"fc.weight_int8", "fc.weight_scale"}
    restored = unpack(stored, {"bits": 8, "format": "int8-symmetric-per-channel", "layers": {"fc": None}},
                      {"fc.weight": w}, "test")["fc.weight"]
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((restored - w).abs() <= step / 2 + 1e-7).all()
    assert torch.equal(restored.abs().amax(dim=1), w.abs().amax(dim=1))  # the row's largest weight is exact


def test_int4_storage_is_the_kernels_grid_so_storing_again_changes_nothing():
    w = torch.randn(16, 64)
    spec = {"bits": 4, "format": "int4-asymmetric-per-group", "layers": {"fc": 32}}
    stored = pack({"fc.weight": w}, {"fc": 32}, 4)
    assert stored["fc.weight_int4"].shape == (16, 32) and stored["fc.weight_scale"].shape == (16, 2)
    restored = unpack(stored, spec, {"fc.weight": w}, "test")["fc.weight"]
    step = (w.view(16, 2, 32).amax(2) - w.view(16, 2, 32).amin(2)) / 15
    assert ((restored - w).view(16, 2, 32).abs() <= step[..., None] / 2 + 1e-6).all()
    again = pack({"fc.weight": restored}, {"fc": 32}, 4)
    assert torch.equal(again["fc.weight_int4"], stored["fc.weight_int4"])


def test_exported_int8_folder_is_a_quarter_of_the_size_and_answers_like_quantizing_at_load(trained, tmp_path):
    out = tmp_path / "int8"
    assert main(["export", str(trained.model), "--quantize", "int8", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 8
    float_size = (trained.model / "model.safetensors").stat().st_size
    embedding = 4 * trained_vocab(trained) * config["lm"]["dim"]  # the embedding stays float32
    assert (out / "model.safetensors").stat().st_size < (float_size - embedding) / 3 + embedding

    from mmllm.inference import load

    saved = load(out, device="cpu", quantize_method="torch-dynamic-int8")
    at_load = load(trained.model, device="cpu", quantize="int8", quantize_method="torch-dynamic-int8")
    assert saved.quantization.bits == 8 and saved.quantization.method == "torch-dynamic-int8"
    question = "What colour is the circle?"
    options = dict(temperature=1.0, seed=3, max_new_tokens=8)
    assert saved.ask(trained.image, question, **options) == at_load.ask(trained.image, question, **options)

    asked = run_mmllm("ask", "--model", out, trained.image, question, "--temperature", "1.0", "--seed", "3",
                      "--max-new-tokens", "8", "--quantize-method", "torch-dynamic-int8")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout == saved.ask(trained.image, question, **options) + "\n"
    assert "quantized" in asked.stderr and "torch-dynamic-int8" in asked.stderr and len(asked.stderr.splitlines()) == 1


def trained_vocab(trained) -> int:
    return json.loads((trained.model / "config.json").read_text())["lm"]["vocab_size"]


def test_a_quantized_folder_opens_on_a_machine_with_a_gpu(trained, tmp_path, monkeypatch, capsys):
    from mmllm.inference import load

    out = tmp_path / "int8"
    assert main(["export", str(trained.model), "--quantize", "int8", "--out", str(out)]) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with a GPU, as load sees it
    capsys.readouterr()
    # the default device: the CPU, where the int8 kernels are (it used to pick CUDA and then refuse)
    vlm = load(out, quantize_method="torch-dynamic-int8")
    assert vlm.device.type == "cpu" and vlm.quantization.method == "torch-dynamic-int8"
    # CUDA asked for by name: the restored float weights run there, said in one line (the move itself is faked)
    moved = []
    real_to = torch.nn.Module.to

    def to(module, *args, device=None, dtype=None, **kwargs):
        moved.append(str(device))
        return real_to(module, dtype=dtype) if dtype is not None else module

    monkeypatch.setattr(torch.nn.Module, "to", to)
    vlm = load(out, device="cuda")
    err = capsys.readouterr().err.strip().splitlines()
    assert vlm.quantization is None and "cuda" in moved and vlm.dtype == torch.bfloat16
    assert len(err) == 1 and "holds int8 weights" in err[0] and "dequantised, in bfloat16" in err[0]


def test_a_damaged_quantized_folder_is_refused_naming_the_layer(trained, tmp_path):
    out = tmp_path / "int4"
    assert main(["export", str(trained.model), "--quantize", "int4", "--out", str(out)]) == 0
    tensors = load_file(str(out / "model.safetensors"))
    name = next(k for k in tensors if k.endswith(".weight_int4"))
    layer = name.removesuffix(".weight_int4")

    from mmllm.inference import load

    damaged = dict(tensors)
    damaged[name] = tensors[name][:, :-1].contiguous()
    save_file(damaged, str(out / "model.safetensors"))
    with pytest.raises(UsageError, match=f"{layer}.weight_int4 is torch.uint8"):
        load(out, device="cpu")
    missing = {k: v for k, v in tensors.items() if k != f"{layer}.weight_min"}
    save_file(missing, str(out / "model.safetensors"))
    with pytest.raises(UsageError, match=f"{layer} has no {layer}.weight_min"):
        load(out, device="cpu")
    save_file(tensors, str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    config["quantization"]["format"] = "int3-something"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="quantization entry is not one this mmllm reads"):
        load(out, device="cpu")


def test_quantize_mistakes_on_the_command_line_exit_2_with_one_line(trained, capsys):
    assert main(["ask", "--model", str(trained.model), str(trained.image), "What is here?", "--quantize", "int4",
                 "--quantize-method", "torch-dynamic-int8"]) == 2
    assert main(["export", str(trained.model), "--quantize", "int8", "--format", "hf", "--out", str(trained.root / "x")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2, errors
    assert "no int4 quantization method 'torch-dynamic-int8'" in errors[0] and "--quantize writes an mmllm folder" in errors[1]
