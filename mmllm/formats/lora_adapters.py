"""LoRA adapters on disk, in PEFT's layout: an adapter folder holds `adapter_config.json` (PEFT's LoraConfig
fields) and `adapter_model.safetensors` (each adapted layer's `lora_A.weight` (r, in) and `lora_B.weight`
(out, r)).

Two spellings of the tensor names: PEFT's, for a language model alone exported as LlamaForCausalLM
(`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), which `PeftModel.from_pretrained` loads
onto the transformers base; and mmllm's own (`lm.layers.0.self_attn.q_proj.lora_A.weight`, any part of a VLM,
with the parts a run trained in full beside them), which `mmllm export` writes for a LoRA checkpoint and
`--lora DIR` reads. Either is read onto its base model (`read_adapter` + `apply_adapter`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmllm.errors import UsageError
from mmllm.model.lora import LoRAConfig, add_lora, lora_state_dict

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> the transformers model inside it


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
                 extra: dict[str, torch.Tensor] | None = None, train_modules: list[str] | None = None) -> Path:
    """Write an adapter folder for a model holding LoRALinear layers. peft: PEFT's names (a language model alone);
    else mmllm's, with `extra` (parts trained in full) beside the adapters."""
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
        adapter_config["mmllm"] = {"modules": config.modules, "base": config.base, "train_modules": train_modules or []}
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n")  # last: a whole folder
    return out


# ---------------------------------------------------------------------------------------------------- reading


def read_adapter(folder: str | Path) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """(LoRA config, tensors under our names) of an adapter folder, ours or PEFT's; UsageError naming what is
    wrong."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise UsageError(f"{folder} is not an adapter folder ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        data = json.loads(config_path.read_text())
    except ValueError as error:
        raise UsageError(f"{config_path} is not JSON: {error}") from None
    if data.get("peft_type") != "LORA":
        raise UsageError(f"{config_path}: peft_type {data.get('peft_type')!r} is not supported (LORA is)")
    if data.get("use_dora") or data.get("bias", "none") != "none" or data.get("rank_pattern") or \
            data.get("alpha_pattern") or data.get("modules_to_save") or data.get("fan_in_fan_out"):
        raise UsageError(f"{config_path}: DoRA, trained biases, per-layer ranks, modules_to_save and fan_in_fan_out "
                         "are not supported")
    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    ours = data.get("mmllm")
    if ours is None:
        tensors = {our_name(name): tensor for name, tensor in tensors.items()}
    targets = data.get("target_modules") or []
    if isinstance(targets, str):  # PEFT's regex form: the layer names it matches
        names = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in tensors if ".lora_" in name}
        targets = sorted(n for n in names if re.fullmatch(targets, n) or re.search(targets, n))
    config = LoRAConfig(rank=int(data["r"]), alpha=float(data.get("lora_alpha", 8)), dropout=0.0,
                        targets=list(targets), modules=(ours or {}).get("modules", ["lm"]),
                        rslora=bool(data.get("use_rslora")))
    return config, tensors


def apply_adapter(model: nn.Module, folder: str | Path) -> LoRAConfig:
    """Put an adapter folder's LoRA layers (and the parts its run trained in full) onto `model`, in place.
    Every adapted layer must be one the config targets, and every targeted layer must have its tensors."""
    config, tensors = read_adapter(folder)
    add_lora(model, config)
    expected = lora_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(name for name in set(tensors) - set(expected) if ".lora_" in name)
    if missing or unexpected:
        raise UsageError(f"adapter {folder} does not fit this model: {len(missing)} adapter tensors missing "
                         f"(e.g. {missing[:1]}), {len(unexpected)} for layers it lacks (e.g. {unexpected[:1]})")
    wrong = [name for name in expected if tensors[name].shape != expected[name].shape]
    if wrong:
        raise UsageError(f"adapter {folder}: {wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, the model's "
                         f"is {tuple(expected[wrong[0]].shape)}")
    state = model.state_dict()
    full = {name: t for name, t in tensors.items() if ".lora_" not in name}
    bad = [name for name in full if name not in state or state[name].shape != full[name].shape]
    if bad:
        raise UsageError(f"adapter {folder}: {bad[0]} is not a parameter of this model with that shape")
    model.load_state_dict({**tensors}, strict=False)
    return config
