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


def model_from_checkpoint(path: str | Path):
    """(model, tokenizer, config) rebuilt from a Lightning checkpoint written by `mmllm fit`."""
    from tokenizers import Tokenizer

    from mmllm.model import VLM

    checkpoint = read_checkpoint(path)
    config = VLMConfig.from_dict(checkpoint["mmllm_config"])
    tokenizer = Tokenizer.from_str(checkpoint["mmllm_tokenizer"])
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    model = VLM(config)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, tokenizer, config


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path) -> Path:
    """Write the model folder for a checkpoint; returns the folder."""
    from mmllm.formats.model_folder import save_model_folder

    model, tokenizer, _ = model_from_checkpoint(checkpoint_path)
    save_model_folder(model, tokenizer, out_dir)
    return Path(out_dir)
