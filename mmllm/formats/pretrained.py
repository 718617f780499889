"""A pretrained language model in, from either of the files people have: a GGUF file (llama.cpp, Ollama,
LM Studio: mmllm.formats.gguf) or a Hugging Face folder (config.json + safetensors + tokenizer.json:
mmllm.formats.hf_llama), and the text-only model it becomes (`vision: None`, its own tokenizer, special ids and
chat template), as `mmllm build --lm FILE.gguf|HF_DIR --out DIR` writes it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmllm.config import VLMConfig
from mmllm.errors import UsageError
from mmllm.formats.gguf import GGUF_MAGIC, read_gguf
from mmllm.formats.hf_idefics3 import read_chat_template, read_optional_json
from mmllm.formats.hf_llama import PretrainedLM, load_hf_lm, read_hf_config

NO_IMAGE_TOKEN = -1  # the image_token_id of a model without vision: no token id ever equals it


def is_gguf(path: Path) -> bool:
    """A file (not a folder) that starts with GGUF's magic."""
    if not path.is_file():
        return False
    with open(path, "rb") as file:
        return file.read(4) == GGUF_MAGIC


def read_language_model(path: str | Path) -> PretrainedLM:
    """The pretrained LM in `path`: a GGUF file or a Hugging Face folder; UsageError naming what is wrong."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if path.is_dir():
        return read_hf_language_model(path)
    return read_gguf(path)  # not GGUF at all is reported there, with the bytes it found


def read_hf_language_model(folder: Path) -> PretrainedLM:
    """A Llama-family Hugging Face folder with its tokenizer.json and chat template."""
    from mmllm.formats.model_folder import read_tokenizer_as_is

    config, tensors = load_hf_lm(folder)
    if not (folder / "tokenizer.json").is_file():
        raise UsageError(f"{folder} has no tokenizer.json (the fast tokenizer's file is what mmllm reads)")
    tokenizer = read_tokenizer_as_is(folder / "tokenizer.json")
    hf = read_hf_config(folder)
    generation = read_optional_json(folder / "generation_config.json")
    stops: list[int] = []
    for eos in (generation.get("eos_token_id"), hf.get("eos_token_id")):
        for value in eos if isinstance(eos, list) else [eos]:
            if isinstance(value, int) and value not in stops:
                stops.append(value)
    if not stops:
        raise UsageError(f"{folder}: no eos_token_id in config.json or generation_config.json (generation would "
                         "never stop)")
    pad = hf.get("pad_token_id")
    return PretrainedLM(config, tensors, tokenizer, stops, pad if isinstance(pad, int) else stops[0],
                        read_chat_template(folder), folder.name)


def text_only_config(lm: PretrainedLM) -> VLMConfig:
    """The model config of a language model alone: no vision, its own ids and template."""
    return VLMConfig(lm=lm.config, vision=None, image_token_id=NO_IMAGE_TOKEN, pad_token_id=lm.pad_token_id,
                     eos_token_ids=list(lm.eos_token_ids), chat_template=lm.chat_template)


def text_only_model(lm: PretrainedLM) -> torch.nn.Module:
    """A VLM without vision holding the pretrained LM's weights (float32, as read), in eval mode."""
    from mmllm.formats.model_folder import load_weights_strict, uninitialised
    from mmllm.model import VLM

    config = text_only_config(lm)
    with uninitialised():  # no random init of 100M+ parameters that are overwritten at once
        model = VLM(config)
    load_weights_strict(model, lm.tensors, lm.name)
    return model.eval()
