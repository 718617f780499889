"""LoRA adapters on disk, in PEFT's layout: an adapter folder holds `adapter_config.json` (PEFT's LoraConfig
fields) and `adapter_model.safetensors` (each adapted layer's `lora_A.weight` (r, in) and `lora_B.weight`
(out, r)).

Two spellings of the tensor names: PEFT's, for a language model alone exported as LlamaForCausalLM
(`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), which `PeftModel.from_pretrained` loads
onto the transformers base; and mmllm's own (`lm.layers.0.self_attn.q_proj.lora_A.weight`, any part of a VLM,
with the parts a run trained in full beside them), which `mmllm export` writes for a LoRA checkpoint and
`--lora DIR` reads. Either is read onto its base model (`read_adapter` + `apply_adapter`).

As PEFT does, the adapted layers are those the tensor names say (whatever form `target_modules` took), each
layer's rank is its tensors' and its alpha `alpha_pattern`'s or `lora_alpha`. An adapter trained over an int8 or
NF4 base (QLoRA) applies to that base dequantised, everywhere: `--lora`, and every export of its run. mmllm's
adapters record their base's weights file (size and SHA-256): another base is refused unless forced.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmllm.errors import UsageError
from mmllm.model.lora import LoRAConfig, lora_state_dict, wrap_linears

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> the transformers model inside it
LORA_TENSORS = (".lora_A.weight", ".lora_B.weight")
# adapter_config.json fields that change what a layer computes, and that mmllm does not compute: refused
UNSUPPORTED = ("use_dora", "fan_in_fan_out", "lora_bias", "target_parameters", "trainable_token_indices",
               "alora_invocation_tokens", "use_qalora", "layer_replication", "use_bdlora", "arrow_config",
               "kasa_config", "monteclora_config")


# ---------------------------------------------------------------------------------------------------- names


def peft_name(ours: str) -> str:
    """Our name of a language model alone's adapter tensor -> PEFT's over LlamaForCausalLM."""
    if ours.startswith("lm.lm_head."):
        return PEFT_PREFIX + ours[len("lm."):]
    if not ours.startswith("lm."):
        raise UsageError(f"{ours} is not in the language model: PEFT's layout here is a LlamaForCausalLM's")
    return f"{PEFT_PREFIX}model.{ours[len('lm.'):]}"


def our_name(peft: str) -> str:
    """The inverse of peft_name."""
    if not peft.startswith(PEFT_PREFIX):
        raise UsageError(f"adapter tensor {peft} is not under PEFT's {PEFT_PREFIX!r}")
    rest = peft[len(PEFT_PREFIX):]
    if rest.startswith("model."):
        return "lm." + rest[len("model."):]
    return "lm." + rest  # lm_head


# ---------------------------------------------------------------------------------------------------- writing


def peft_config(config: LoRAConfig, base: str) -> dict[str, Any]:
    """adapter_config.json as PEFT's LoraConfig writes it (fields PEFT has no default for, and ours)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": config.rank, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
        "target_modules": sorted(config.targets), "bias": "none", "use_rslora": config.rslora, "use_dora": False,
        "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }


def save_adapter(model: nn.Module, config: LoRAConfig, out: str | Path, base: str, peft: bool,
                 extra: dict[str, torch.Tensor] | None = None, train_modules: list[str] | None = None,
                 base_identity: dict[str, Any] | None = None) -> Path:
    """Write an adapter folder for a model holding LoRALinear layers. peft: PEFT's names (a language model alone);
    else mmllm's, with `extra` (parts trained in full) beside the adapters, the base's precision (config.base)
    and its identity (weights_identity, as the run recorded it)."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().float().cpu().contiguous() for name, t in lora_state_dict(model).items()}
    if peft:
        if extra:
            raise UsageError("PEFT's adapter folder here holds adapters only; this run also trained "
                             f"{', '.join(train_modules or [])} in full: export it with --merge-lora")
        tensors = {peft_name(name): tensor for name, tensor in tensors.items()}
    else:
        tensors.update({name: t.detach().cpu().contiguous() for name, t in (extra or {}).items()})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter_config = peft_config(config, base)
    if not peft:
        adapter_config["mmllm"] = {"modules": config.modules, "base": config.base, "train_modules": train_modules or [],
                                   "base_identity": base_identity}
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n")  # last: a whole folder
    return out


# ---------------------------------------------------------------------------------------------------- reading


def weights_identity(base: str | Path) -> dict[str, Any]:
    """What says which base an adapter was trained on: its weights file (a model folder's model.safetensors, or
    the file itself), by size and SHA-256."""
    from mmllm.formats.model_folder import WEIGHTS_FILE

    path = Path(base)
    path = path / WEIGHTS_FILE if path.is_dir() else path
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def check_base(recorded: dict[str, Any] | None, base: str | Path, what: str, force: bool = False) -> None:
    """UsageError (one line) when `base` is not the base `what` was trained on; nothing when no base is recorded
    (PEFT's adapters, older files) or `force`."""
    if not recorded or force:
        return
    from mmllm.formats.model_folder import WEIGHTS_FILE

    path = Path(base) / WEIGHTS_FILE if Path(base).is_dir() else Path(base)
    size = path.stat().st_size if path.is_file() else None
    if size == recorded["bytes"] and weights_identity(base)["sha256"] == recorded["sha256"]:
        return
    this = f"{size:,} bytes" if size is not None else f"no {path.name}"
    raise UsageError(f"{what} was trained on another base than {base} (its {recorded['file']}: {recorded['bytes']:,} "
                     f"bytes, sha256 {recorded['sha256'][:12]}...; this one: {this}): use it on its base, or pass "
                     "--force")


@dataclass
class Adapter:
    """An adapter folder as read: each adapted linear's config (rank from its tensors, alpha from alpha_pattern or
    lora_alpha, the base's precision), its tensors under our names, and the base it records."""

    folder: Path
    layers: dict[str, LoRAConfig]  # our module name (lm.layers.0.self_attn.q_proj) -> its config
    tensors: dict[str, torch.Tensor]  # A and B under our names, and any full tensors (modules_to_save, ours)
    base_identity: dict[str, Any] | None


def pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the module's name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def read_adapter(folder: str | Path) -> Adapter:
    """An adapter folder, ours or PEFT's; UsageError naming the file and what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise UsageError(f"{folder} is not an adapter folder ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        data = json.loads(config_path.read_text())
    except ValueError as error:
        raise UsageError(f"{config_path} is not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("peft_type") != "LORA":
        raise UsageError(f"{config_path}: peft_type {data.get('peft_type') if isinstance(data, dict) else None!r} is "
                         "not supported (LORA is)")
    unsupported = [name for name in UNSUPPORTED if data.get(name)]
    if data.get("bias", "none") != "none":
        unsupported.append(f"bias {data['bias']!r}")
    if unsupported:
        raise UsageError(f"{config_path}: {', '.join(unsupported)} not supported (plain LoRA on linear layers is)")
    rank = data.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise UsageError(f"{config_path}: r (the adapters' rank) is {'missing' if rank is None else repr(rank)}; "
                         "it must be a positive integer")
    alpha = data.get("lora_alpha", 8)  # PEFT's default
    rank_pattern, alpha_pattern = data.get("rank_pattern") or {}, data.get("alpha_pattern") or {}
    ours = data.get("mmllm")
    precision = (ours or {}).get("base", "float")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise UsageError(f"{weights_path} is not a readable safetensors file (truncated?): {error}") from None
    if ours is None:
        tensors = {_our_name(name, weights_path): tensor for name, tensor in tensors.items()}
    # The adapted layers are those the tensors name (PEFT loads the same): ...q_proj.lora_A.weight (r, in)
    # and ...q_proj.lora_B.weight (out, r)
    modules = sorted({name[:-len(LORA_TENSORS[0])] for name in tensors if name.endswith(LORA_TENSORS)})
    other = [name for name in tensors if ".lora_" in name and not name.endswith(LORA_TENSORS)]
    if other:
        raise UsageError(f"{weights_path} holds {other[0]}: only LoRA's A and B weights on linear layers are "
                         "supported (not DoRA, embedding or bias adapters)")
    if not modules:
        raise UsageError(f"{weights_path} holds no LoRA weights (no ...lora_A.weight)")
    layers = {}
    for module in modules:
        a, b = tensors.get(module + LORA_TENSORS[0]), tensors.get(module + LORA_TENSORS[1])
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise UsageError(f"{weights_path}: {module} has lora_A {None if a is None else tuple(a.shape)} and "
                             f"lora_B {None if b is None else tuple(b.shape)}, not (r, in) and (out, r)")
        key = module if ours is not None else peft_name(module)[len(PEFT_PREFIX):]  # the name the patterns match
        try:
            expected = pattern_value(rank_pattern, key, rank)
            if a.shape[0] != expected:
                raise UsageError(f"{weights_path}: {key} has rank {a.shape[0]} but {config_path.name} says {expected}")
            layers[module] = LoRAConfig(rank=int(a.shape[0]), alpha=pattern_value(alpha_pattern, key, alpha),
                                        targets=[module.rsplit(".", 1)[-1]], modules=[module.split(".", 1)[0]],
                                        base=precision, rslora=bool(data.get("use_rslora")))
        except (ValueError, TypeError, re.error) as error:  # a bad alpha, or a pattern that is no regex
            raise UsageError(f"{config_path}: {error}") from None
    return Adapter(folder, layers, tensors, (ours or {}).get("base_identity"))


def _our_name(peft: str, weights_path: Path) -> str:
    try:
        return our_name(peft)
    except UsageError as error:
        raise UsageError(f"{weights_path}: {error}") from None


def apply_adapter(model: nn.Module, folder: str | Path, base: str | Path | None = None,
                  force: bool = False) -> Adapter:
    """Put an adapter folder's LoRA layers (and the full tensors beside them) onto `model`, in place. base: where
    `model` came from, refused when the adapter records another base (unless force)."""
    adapter = read_adapter(folder)
    if base is not None:
        check_base(adapter.base_identity, base, f"adapter {folder}", force)
    weights_path = adapter.folder / ADAPTER_WEIGHTS
    for name, config in adapter.layers.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            layer = None
        if not isinstance(layer, nn.Linear):
            raise UsageError(f"{weights_path} adapts {name}, which this model does not have"
                             + ("" if layer is None else f" as a linear layer ({type(layer).__name__})"))
        a, b = adapter.tensors[name + LORA_TENSORS[0]], adapter.tensors[name + LORA_TENSORS[1]]
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
            raise UsageError(f"{weights_path}: {name} maps {a.shape[1]} -> {b.shape[0]} features, this model's "
                             f"{layer.in_features} -> {layer.out_features}: another base's adapter")
    state = model.state_dict()
    full = {name: t for name, t in adapter.tensors.items() if ".lora_" not in name}
    bad = [name for name in full if name not in state or state[name].shape != full[name].shape]
    if bad:
        raise UsageError(f"{weights_path}: {bad[0]} {tuple(full[bad[0]].shape)} is not a weight of this model with "
                         "that shape")
    wrap_linears(model, adapter.layers)
    result = model.load_state_dict(adapter.tensors, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return adapter
