"""Turn a Lightning checkpoint into a model folder (config.json, model.safetensors, tokenizer.json).

A Lightning checkpoint is a pickle: loading one from a stranger can run code. The model folder it becomes
holds only safetensors and JSON, and is what should be shared.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from mmllm.config import VLMConfig
from mmllm.errors import UsageError


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict, or a UsageError naming the file when it is missing, not ours, or corrupt.
    mmap=True maps the tensors instead of reading them (a cheap look at names and shapes)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise UsageError(f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or "mmllm_config" not in checkpoint or "state_dict" not in checkpoint:
        raise UsageError(f"{path} is not an mmllm training checkpoint (no model config inside)")
    return checkpoint


def model_from_checkpoint(path: str | Path, merge_lora: bool = True, force: bool = False):
    """(model, tokenizer, config) rebuilt from a Lightning checkpoint written by `mmllm fit`. A LoRA run's
    checkpoint holds only what trained: the frozen base comes from the model folder it names (refused when its
    weights are not those the run recorded, unless `force`), and its adapters are merged into plain linear layers
    (an int8 / NF4 base dequantised) unless `merge_lora` is False (then see lora_of_checkpoint)."""
    from tokenizers import Tokenizer

    from mmllm.model import VLM

    checkpoint = read_checkpoint(path)
    config = VLMConfig.from_dict(checkpoint["mmllm_config"])
    tokenizer = Tokenizer.from_str(checkpoint["mmllm_tokenizer"])
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if "mmllm_lora" in checkpoint:
        model = _lora_model(checkpoint["mmllm_lora"], state, Path(path), merge_lora, force, config.lm.vocab_size)
    else:
        model = VLM(config)
        model.load_state_dict(state, strict=True)
    model.eval()
    return model, tokenizer, config


def lora_of_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """A LoRA run's record in its checkpoint ({config, base, train_modules, trained}), or None for a full fit."""
    return read_checkpoint(path, mmap=True).get("mmllm_lora")


def _lora_model(lora: dict[str, Any], state: dict[str, torch.Tensor], path: Path, merge: bool, force: bool,
                vocab_size: int):
    """The base model folder with the checkpoint's adapters (and fully trained parts) on it, its vocabulary grown
    as the run grew it (an MLM run's `<mask>`: rows the checkpoint does not hold, rebuilt from the base)."""
    from mmllm.formats.lora_adapters import check_base
    from mmllm.formats.model_folder import load_model_folder
    from mmllm.model.lora import LoRAConfig, add_lora, merge_lora
    from mmllm.model.vocabulary import grow_vocabulary

    base = Path(lora["base"])
    if not base.is_dir():
        raise UsageError(f"checkpoint {path} is a LoRA run on {base}, which is not there any more: the checkpoint "
                         "holds the adapters only")
    check_base(lora.get("base_identity"), base, f"checkpoint {path} (a LoRA run)", force)
    model, _, _ = load_model_folder(base)
    model.float()
    grow_vocabulary(model, vocab_size)
    add_lora(model, LoRAConfig(**lora["config"]))
    expected = set(lora["trained"])
    if set(state) != expected:
        raise UsageError(f"checkpoint {path} does not hold the tensors its LoRA run trained "
                         f"({len(expected - set(state))} missing, {len(set(state) - expected)} unexpected)")
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    if merge:
        merge_lora(model)
    return model


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Write the model folder for a checkpoint (force: a LoRA run's on whatever its base folder now holds);
    returns the folder."""
    from mmllm.formats.model_folder import save_model_folder

    model, tokenizer, _ = model_from_checkpoint(checkpoint_path, force=force)
    save_model_folder(model, tokenizer, out_dir)
    return Path(out_dir)
