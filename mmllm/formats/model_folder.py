"""Save and load the project's model folder: `config.json`, `model.safetensors` and `tokenizer.json` (the
layout is the contract of docs/formats.md).

A model folder is what `mmllm build` and `mmllm export` write and what inference, evaluation and
`init_from` read. Loading parses JSON and safetensors only, never a pickle, so a folder from anywhere is safe
to open. Weight names must match the model exactly; tied weights are stored once, under their first name.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmllm.config import VLMConfig
from mmllm.errors import UsageError, write_failure
from mmllm.user_files import read_json_object

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1  # bump when the layout of a model folder changes; loading refuses newer versions
MODEL_FOLDER_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)


# ----------------------------------------------------------------------------------------------------------
# State dicts with tied weights


def _storage_key(tensor: torch.Tensor) -> tuple:
    """Identifies the memory a tensor views: two state-dict entries with equal keys are one tied weight."""
    storage = tensor.untyped_storage()
    return (tensor.device, storage.data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())


def tied_aliases(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """Name -> the earlier name it shares memory with (e.g. a tied LM head -> the token embedding)."""
    first_name: dict[tuple, str] = {}
    aliases = {}
    for name, tensor in state_dict.items():
        key = _storage_key(tensor)
        if key in first_name:
            aliases[name] = first_name[key]
        else:
            first_name[key] = name
    return aliases


def unique_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict with each tied weight once, as contiguous CPU tensors ready for safetensors."""
    state_dict = module.state_dict()
    aliases = tied_aliases(state_dict)
    return {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items() if name not in aliases}


def load_weights_strict(module: nn.Module, tensors: dict[str, torch.Tensor], source: str,
                        assign: bool = False) -> None:
    """Copy `tensors` into `module`, requiring names and shapes to match exactly (tied aliases may be absent).

    `source` names where the tensors came from, for the error message. assign: the module takes the tensors
    themselves instead of copies (no second copy of the weights in memory; their dtype becomes the module's),
    except where two names share one tensor, whose tie a plain assignment would break.
    """
    expected = module.state_dict()
    aliases = tied_aliases(expected)
    missing = sorted(set(expected) - set(aliases) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(
        f"{name} {tuple(tensors[name].shape)} != {tuple(expected[name].shape)}"
        for name in set(tensors) & set(expected)
        if tensors[name].shape != expected[name].shape
    )
    if missing or unexpected or wrong_shape:
        problems = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if names:
                shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
                problems.append(f"{label}: {shown}")
        raise UsageError(f"weights in {source} do not match the model; " + "; ".join(problems))
    # A tied alias present in the file would be written twice into one tensor; the first name carries it.
    result = module.load_state_dict({k: v for k, v in tensors.items() if k not in aliases}, strict=False,
                                    assign=assign and not aliases)
    assert not result.unexpected_keys and set(result.missing_keys) <= set(aliases), result


# ----------------------------------------------------------------------------------------------------------
# Saving


def save_model_folder(model: nn.Module, tokenizer: Any, out_dir: str | Path, quantize: int | None = None) -> Path:
    """Write `config.json`, `model.safetensors` and `tokenizer.json` for a VLM and its tokenizer into `out_dir`.

    The model's dtype is kept; tied weights are stored once. `tokenizer` is a `tokenizers.Tokenizer`.
    quantize 8 or 4 stores the linear layers' weights as int8 / int4 (mmllm.compress.quantized_weights).
    All three files are written under temporary names first and renamed only when every one is complete,
    config.json last: a save that fails (a full disk) or is killed half-way leaves the folder as it was, and
    the OSError names the file that could not be written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config: VLMConfig = model.config
    tensors, config_json = unique_state_dict(model), config_to_json(config)
    if quantize is not None:
        from mmllm.compress.quantization import plan_layers
        from mmllm.compress.quantized_weights import pack, quantization_spec

        layers, _kept = plan_layers(model, quantize)
        tensors = pack(tensors, layers, quantize)
        config_json["quantization"] = quantization_spec(quantize, layers)
    writers = {
        TOKENIZER_FILE: lambda path: tokenizer.save(str(path)),
        WEIGHTS_FILE: lambda path: save_file(tensors, str(path), metadata={"format": "pt"}),
        CONFIG_FILE: lambda path: path.write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8"),
    }
    partial = {name: out_dir / f".{name}.partial" for name in writers}
    try:
        for name, write in writers.items():
            try:
                write(partial[name])
            except Exception as error:  # a full disk or quota: name the file (libraries wrap the OSError)
                failure = write_failure(error, str(out_dir / name), name)
                if failure is None:
                    raise
                raise failure from error
        for name in writers:  # in order, config.json last
            os.replace(partial[name], out_dir / name)
    finally:
        for path in partial.values():
            path.unlink(missing_ok=True)
    return out_dir


def config_to_json(config: VLMConfig) -> dict[str, Any]:
    """What `config.json` holds: the VLMConfig fields and the folder's format version."""
    return {"format_version": FORMAT_VERSION, **config.to_dict()}


# ----------------------------------------------------------------------------------------------------------
# Loading


def read_model_config(path: str | Path) -> VLMConfig:
    """The VLMConfig of a model folder, with clear errors for a missing, foreign or newer `config.json`."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"model folder {folder} not found")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise UsageError(f"{config_path} not found: {folder} is not a model folder")
    data = read_json_object(config_path)
    if "format_version" not in data:
        hint = ""
        if "model_type" in data:
            hint = " (it looks like a Hugging Face model; import it with `mmllm build --lm/--vision`)"
        raise UsageError(f"{config_path} is not an mmllm model config{hint}")
    version = data.pop("format_version")
    data.pop("quantization", None)  # how the weights are stored (read_quantization), not the model's shape
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UsageError(f"{config_path} has format version {version}; this mmllm reads up to {FORMAT_VERSION}")
    try:
        return VLMConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{config_path} is not a valid model config: {error}") from error


def read_quantization(path: str | Path) -> dict | None:
    """config.json's "quantization" entry of a folder written by `mmllm export --quantize`, or None."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        return None
    return read_json_object(config_path).get("quantization")


def read_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing, truncated or corrupted file is a UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} not found")
    try:
        return load_file(str(path), device=str(device))
    except Exception as error:  # safetensors raises SafetensorError (a Rust type) for broken files
        raise UsageError(f"{path} is not a readable safetensors file (truncated or corrupted?): {error}") from error


def read_tokenizer_as_is(path: Path):
    """A tokenizer.json with nothing added or changed but padding and truncation off (an imported checkpoint's)."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise UsageError(f"{path} not found")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # the tokenizers library raises a bare Exception on malformed JSON
        raise UsageError(f"{path} is not a readable tokenizer.json: {error}") from error
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                  "xavier_normal_", "zeros_", "ones_", "constant_", "orthogonal_")
_skipping_init = threading.local()  # .depth > 0: this thread is inside uninitialised()
_install_lock = threading.Lock()


def _skippable(function):
    """torch.nn.init's `function`, idle in a thread inside uninitialised() and itself everywhere else."""
    @functools.wraps(function)
    def init(tensor, *args, **kwargs):
        if getattr(_skipping_init, "depth", 0):
            return tensor
        return function(tensor, *args, **kwargs)

    init.mmllm_skippable = True
    return init


def _install_skippable_init() -> None:
    """Wrap torch.nn.init's functions once per process. Only the calling thread's flag decides whether they run,
    so a model built meanwhile in another thread (serve, tests) is initialised as usual."""
    with _install_lock:
        for name in INIT_FUNCTIONS:
            function = getattr(nn.init, name)
            if not getattr(function, "mmllm_skippable", False):
                setattr(nn.init, name, _skippable(function))


@contextmanager
def uninitialised():
    """Modules built inside, in this thread, keep their freshly allocated (uninitialised) memory: torch.nn.init's
    functions, which every layer's constructor calls, do nothing here. For models whose every weight is loaded
    next. (Building on the meta device does the same, but its dispatch imports torch._dynamo: 1.5 s of a cold
    start.) Other threads are unaffected."""
    _install_skippable_init()
    _skipping_init.depth = getattr(_skipping_init, "depth", 0) + 1
    try:
        yield
    finally:
        _skipping_init.depth -= 1


def load_model_tokenizer(path: str | Path, config: VLMConfig | None = None):
    """The tokenizer of a model folder (`tokenizer.json`): through the project's tokenizer loader, or as it was
    saved for a model with its own chat template or without a vision tower (an imported checkpoint: its ids must
    stay its own)."""
    from data_pipelines.chat.tokenizer import load_tokenizer

    tokenizer_path = Path(path) / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise UsageError(f"{tokenizer_path} not found")
    if config is not None and (config.chat_template is not None or not config.reads_images):
        return read_tokenizer_as_is(tokenizer_path)
    try:
        tokenizer, _added = load_tokenizer(tokenizer_path)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from error
    return tokenizer


def load_model_folder(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[nn.Module, Any, VLMConfig]:
    """(model, tokenizer, config) from a model folder; the model is in eval mode.

    `dtype=None` keeps the dtype the weights were saved in, so a round trip is exact.
    """
    from mmllm.model import VLM

    folder = Path(path)
    config = read_model_config(folder)
    tokenizer = load_model_tokenizer(folder, config)
    check_tokenizer_matches(config, tokenizer, folder / TOKENIZER_FILE)
    tensors = read_weights(folder / WEIGHTS_FILE)
    with uninitialised():  # the file overwrites every weight: drawing random ones took 1.3 s of a 135M cold start
        model = VLM(config)
    spec = read_quantization(folder)
    if spec is not None:  # int weights and scales -> float weights, checked layer by layer
        from mmllm.compress.quantized_weights import unpack

        tensors = unpack(tensors, spec, model.state_dict(), str(folder / WEIGHTS_FILE))
    if dtype is None:
        saved = [t.dtype for t in tensors.values() if t.is_floating_point()]
        dtype = saved[0] if saved else None
    if dtype is not None:
        model.to(dtype=dtype)  # parameters no tensor replaces (none, or tied aliases) and the dtype the model reports
        tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}
    # The model takes the file's tensors as its weights: one copy of them in memory, not two.
    load_weights_strict(model, tensors, str(folder / WEIGHTS_FILE), assign=True)
    del tensors
    model.to(device=device)
    model.eval()
    return model, tokenizer, config


def check_tokenizer_matches(config: VLMConfig, tokenizer: Any, tokenizer_path: Path) -> None:
    """Refuse a tokenizer whose ids the model cannot embed or whose image token is not the model's."""
    from data_pipelines.chat import special_tokens
    from data_pipelines.chat.tokenizer import vocab_size as tokenizer_vocab_size

    vocab_size = tokenizer_vocab_size(tokenizer)
    if vocab_size > config.lm.vocab_size:
        raise UsageError(
            f"{tokenizer_path} has {vocab_size} tokens but the model embeds only {config.lm.vocab_size}"
        )
    if not config.reads_images:  # a language model alone has no image token
        return
    if config.chat_template is not None:  # the checkpoint's own tokens: the image id must name a token
        if tokenizer.id_to_token(config.image_token_id) is None:
            raise UsageError(f"{tokenizer_path} has no token with the model's image_token_id {config.image_token_id}")
        return
    image_id = tokenizer.token_to_id(special_tokens.IMAGE)
    if image_id != config.image_token_id:
        raise UsageError(
            f"{tokenizer_path} gives {special_tokens.IMAGE} id {image_id}, but the model was built with "
            f"image_token_id {config.image_token_id}"
        )
