"""LoRA adapter folders on their base (mmllm.formats.lora_adapters): PEFT's own adapters, in every form of
target_modules, merge as peft's merge_and_unload does; broken folders stop every --lora command with one line;
a QLoRA run means one model under --lora and export --merge-lora; a base other than the recorded one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_text_model

import mmllm
from mmllm.cli.main import main
from mmllm.formats.lora_adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_adapter
from mmllm.formats.model_folder import save_model_folder
from mmllm.model.lora import LoRAConfig, add_lora, lora_modules
from mmllm.train.model_setup import setup_lora

IDS = torch.randint(4, 320, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A language model alone (width 32, 2 layers, untied head) as an mmllm folder (DIR/model) and as a
    transformers LlamaForCausalLM folder (DIR/hf)."""
    from mmllm.formats.hf_llama import export_llama

    root = tmp_path_factory.mktemp("lora-adapters")
    model, tokenizer = tiny_text_model(dim=32, tie_embeddings=False)
    save_model_folder(model, tokenizer, root / "model")
    export_llama(model, tokenizer, model.config, root / "hf")
    other, _ = tiny_text_model(seed=1, dim=32, tie_embeddings=False)  # same shapes, other weights
    save_model_folder(other, tokenizer, root / "other")
    return root


def peft_adapter(base: Path, out: Path, **options):
    """(adapter folder as peft writes it, logits of peft's merge_and_unload on IDS)."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(base / "hf", dtype=torch.float32)
    torch.manual_seed(0)  # init_lora_weights=False: B random too, so every adapted layer moves the logits
    adapted = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **options))
    with torch.no_grad():  # modules_to_save: a trained copy differs from the base's
        for name, param in adapted.named_parameters():
            if ".modules_to_save." in name:
                param.normal_(0, 0.1)
    adapted.save_pretrained(out)
    with torch.no_grad():
        return out, adapted.merge_and_unload().eval()(IDS).logits


@pytest.mark.parametrize("options", [
    {"target_modules": ["q_proj", "v_proj"]},
    {"target_modules": r".*\.(q_proj|v_proj)"},
    {"target_modules": r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"},
    {"target_modules": "all-linear"},
    {"target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1]},
    {"target_modules": ["q_proj", "v_proj", "up_proj"], "rank_pattern": {"layers.1.self_attn.v_proj": 2},
     "alpha_pattern": {"up_proj": 3}},
    {"target_modules": ["k_proj"], "use_rslora": True},
    {"target_modules": ["o_proj"], "modules_to_save": ["lm_head"]},
], ids=["list", "regex", "full-name-regex", "all-linear", "layers_to_transform", "rank-alpha-patterns", "rslora",
        "modules_to_save"])
def test_peft_adapters_merge_as_peft_merges_them(base, tmp_path, options):
    folder, expected = peft_adapter(base, tmp_path / "adapter", **options)
    vlm = mmllm.load(base / "model", lora=folder)
    with torch.no_grad():
        torch.testing.assert_close(vlm.model(IDS).logits, expected, rtol=0, atol=1e-5)


def test_the_adapted_layers_are_those_the_tensors_name_each_with_its_rank_and_alpha(base, tmp_path):
    folder, _ = peft_adapter(base, tmp_path / "adapter", target_modules=r".*\.(q_proj|v_proj)",
                             rank_pattern={"layers.1.self_attn.v_proj": 2}, alpha_pattern={"q_proj": 3})
    layers = read_adapter(folder).layers
    assert sorted(layers) == [f"lm.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    assert layers["lm.layers.1.self_attn.v_proj"].rank == 2 and layers["lm.layers.0.self_attn.v_proj"].rank == 4
    assert layers["lm.layers.0.self_attn.q_proj"].scaling == 3 / 4  # alpha 3 (pattern), rank 4
    assert layers["lm.layers.1.self_attn.v_proj"].scaling == 8 / 2  # alpha 8 (lora_alpha), rank 2


# ---- broken adapter folders: one line naming the file and what is wrong, exit 2, on every --lora command


def our_adapter(base: Path, out: Path, precision: str = "float", seed: int = 0) -> Path:
    """An mmllm adapter folder (rank 4 on q_proj and v_proj, B random) for base/model, as export writes it."""
    from mmllm.formats.lora_adapters import save_adapter

    model = mmllm.load(base / "model").model
    config = LoRAConfig(rank=4, alpha=8, targets=["q_proj", "v_proj"], base=precision)
    add_lora(model, config)
    torch.manual_seed(seed)
    for layer in lora_modules(model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.5)
    save_adapter(model, config, out, str(base / "model"), peft=False)
    return out


def break_config(folder: Path, **changes) -> None:
    data = json.loads((folder / ADAPTER_CONFIG).read_text())
    data.update(changes)
    data = {k: v for k, v in data.items() if v is not None}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(data))


def rename_tensors(folder: Path, old: str, new: str) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    save_file({name.replace(old, new): t for name, t in tensors.items()}, str(folder / ADAPTER_WEIGHTS))


def missing_r(folder):
    break_config(folder, r=None)


def truncated(folder):
    data = (folder / ADAPTER_WEIGHTS).read_bytes()
    (folder / ADAPTER_WEIGHTS).write_bytes(data[: len(data) // 2])


def absent_layer(folder):
    rename_tensors(folder, "layers.1.", "layers.7.")  # a 2-layer model has no layer 7


def other_shapes(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / ADAPTER_WEIGHTS))  # as if trained on a model of width 48
    save_file({n: torch.zeros(4, 48) if ".lora_A." in n else torch.zeros(48, 4) for n in tensors},
              str(folder / ADAPTER_WEIGHTS))


@pytest.mark.parametrize("damage, says", [
    (missing_r, f"{ADAPTER_CONFIG}: r (the adapters' rank) is missing"),
    (truncated, f"{ADAPTER_WEIGHTS} is not a readable safetensors file"),
    (absent_layer, f"{ADAPTER_WEIGHTS} adapts lm.layers.7.self_attn.q_proj, which this model does not have"),
    (other_shapes, f"{ADAPTER_WEIGHTS}: lm.layers.0.self_attn.q_proj maps 48 -> 48 features, this model's 32 -> 32"),
], ids=["missing-r", "truncated-safetensors", "absent-layer", "other-shapes"])
@pytest.mark.parametrize("command", [["generate", "Paris is"], ["eval", "--data", "nowhere", "--task", "text"]],
                         ids=["generate", "eval"])
def test_a_broken_adapter_folder_stops_a_lora_command_with_one_line(base, tmp_path, capsys, damage, says, command):
    folder = our_adapter(base, tmp_path / "adapter")
    damage(folder)
    assert main([*command, "--model", str(base / "model"), "--lora", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and str(folder) in err, err


def test_a_peft_config_with_an_unsupported_option_is_refused_in_one_line(base, tmp_path, capsys):
    folder, _ = peft_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    break_config(folder, lora_bias=True)  # a bias on B: a layer mmllm does not compute
    capsys.readouterr()  # transformers' progress bars
    assert main(["generate", "Paris is", "--model", str(base / "model"), "--lora", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lora_bias not supported" in err


# ---- QLoRA: an adapter applies to the dequantised base it was trained on, under --lora and export alike


def lora_checkpoint(folder: Path, out: Path, precision: str) -> Path:
    """A LoRA run's checkpoint on the model folder, as `mmllm fit` writes it (its adapters, B random, and the
    record of its base)."""
    from mmllm.formats.model_folder import load_model_folder

    model, tokenizer, config = load_model_folder(folder)
    setup = setup_lora(model, {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"], "base": precision}, None,
                       str(folder))
    torch.manual_seed(0)
    for layer in lora_modules(model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.5)
    state = model.state_dict()
    torch.save({"mmllm_config": config.to_dict(), "mmllm_tokenizer": tokenizer.to_str(),
                "state_dict": {f"model.{name}": state[name] for name in setup.trained},
                "mmllm_lora": setup.to_checkpoint()}, out)
    return out


@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_a_qlora_adapter_on_its_base_is_the_model_export_merge_lora_writes(base, tmp_path, precision):
    if precision == "nf4":
        pytest.importorskip("torchao")
    checkpoint = lora_checkpoint(base / "model", tmp_path / "run.ckpt", precision)
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "adapter")]) == 0
    assert main(["export", str(checkpoint), "--merge-lora", "--out", str(tmp_path / "merged")]) == 0
    on_base = mmllm.load(base / "model", lora=tmp_path / "adapter").model
    merged = mmllm.load(tmp_path / "merged").model
    float_merge = mmllm.load(base / "model", lora=float_twin(tmp_path / "adapter", tmp_path / "float")).model
    with torch.no_grad():
        torch.testing.assert_close(on_base(IDS).logits, merged(IDS).logits, rtol=0, atol=1e-5)
        assert (on_base(IDS).logits - float_merge(IDS).logits).abs().max() > 1e-3  # the precision mattered


def float_twin(folder: Path, out: Path) -> Path:
    """The same adapter folder saying its base was float."""
    import shutil

    shutil.copytree(folder, out)
    data = json.loads((out / ADAPTER_CONFIG).read_text())
    data["mmllm"]["base"] = "float"
    (out / ADAPTER_CONFIG).write_text(json.dumps(data))
    return out


# ---- the base's identity: recorded in the checkpoint and the adapter, another base refused unless forced


def test_another_base_is_refused_in_one_line_unless_forced(base, tmp_path, capsys):
    checkpoint = lora_checkpoint(base / "model", tmp_path / "run.ckpt", "float")
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "adapter")]) == 0
    recorded = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())["mmllm"]["base_identity"]
    assert recorded["file"] == "model.safetensors"
    assert recorded["bytes"] == (base / "model" / "model.safetensors").stat().st_size and len(recorded["sha256"]) == 64
    capsys.readouterr()
    args = ["generate", "Paris is", "--max-new-tokens", "2", "--model", str(base / "other"),
            "--lora", str(tmp_path / "adapter")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained on another base" in err and "--force" in err
    assert main([*args, "--force"]) == 0


def test_a_lora_checkpoint_whose_base_folder_changed_is_refused_unless_forced(base, tmp_path, capsys):
    import shutil

    shutil.copytree(base / "model", tmp_path / "base")
    checkpoint = lora_checkpoint(tmp_path / "base", tmp_path / "run.ckpt", "float")
    shutil.copy(base / "other" / "model.safetensors", tmp_path / "base" / "model.safetensors")  # base replaced
    capsys.readouterr()
    args = ["export", str(checkpoint), "--merge-lora", "--out", str(tmp_path / "merged")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint {checkpoint} (a LoRA run) was trained on another base" in err
    with pytest.raises(mmllm.errors.UsageError, match="was trained on another base"):
        mmllm.load(checkpoint)
    assert main([*args, "--force"]) == 0


# ---- the LoRA log line: an int8 base's weights are buffers, and still the base's weights


@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_a_quantised_base_counts_as_many_weights_as_the_float_one(precision):
    from mmllm.model.lora import parameter_counts

    if precision == "nf4":
        pytest.importorskip("torchao")
    counts = {}
    for kind in ("float", precision):
        model, _ = tiny_text_model(dim=256)
        add_lora(model, LoRAConfig(rank=8, alpha=16, base=kind))
        counts[kind] = parameter_counts(model)
    trainable, total = counts["float"]
    assert counts[precision] == counts["float"] and 0 < trainable < total / 20  # rank 8 of width 256: ~3%


def test_a_qlora_runs_peft_export_gives_the_model_lora_gives(base, tmp_path):
    """PEFT's rule on export too: OUT/base is the int8 base dequantised, so PEFT's model is --merge-lora's and
    --lora's."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    checkpoint = lora_checkpoint(base / "model", tmp_path / "run.ckpt", "int8")
    assert main(["export", str(checkpoint), "--format", "hf", "--lora", "peft", "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "adapter")]) == 0
    assert main(["export", str(checkpoint), "--merge-lora", "--out", str(tmp_path / "merged")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "base", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "hf" / "adapter").eval()
    merged = mmllm.load(tmp_path / "merged").model
    on_base = mmllm.load(base / "model", lora=tmp_path / "adapter").model
    with torch.no_grad():
        torch.testing.assert_close(theirs(IDS).logits, merged(IDS).logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(on_base(IDS).logits, merged(IDS).logits, rtol=0, atol=1e-5)
