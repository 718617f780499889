"""Idefics3 / SmolVLM interop: import a whole checkpoint from a Hugging Face folder on disk, and export a model
back to that format (transformers' AutoModelForImageTextToText and AutoProcessor load it). One naming table,
beside hf_import.py's Llama and SigLIP tables, read top to bottom like it, serves both directions.

An Idefics3 model is a SigLIP-style vision tower (`model.vision_model.*`), pixel shuffle by `scale_factor`
followed by one bias-free Linear (`model.connector.modality_projection.proj`), and a Llama decoder
(`model.text_model.*`, head `lm_head.weight`). Its processor resizes the long side to `size.longest_edge`, then
squashes to `max_image_size.longest_edge` (or, with `do_image_splitting`, cuts tiles of that size and adds the
whole image squashed), normalises with image_mean/std, and writes each image as `<fake_token_around_image>
<global-img>` + image_seq_len `<image>` + `<fake_token_around_image>` (tiles first, data_pipelines.chat.image_layout).
Each of those maps to one field of VLMConfig (projector linear, resize idefics3, image_markup idefics3,
image_splitting, the checkpoint's own chat template); every tensor's shape is checked against its config, and a tensor no entry
reads is refused. A model with an option Idefics3 has no counterpart for is refused with one line naming the
option (`exportable`), never written half-right. `transformers` is never imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data_pipelines.chat.image_layout import IDEFICS3_IMAGE_OPEN
from data_pipelines.chat.smolvlm_format import END_OF_UTTERANCE
from mmllm.formats import hf_llama as hf_import
from mmllm.config import VLMConfig
from mmllm.errors import UsageError
from mmllm.user_files import read_json_object

MODEL_TYPES = {"idefics3": "idefics3_vision", "smolvlm": "smolvlm_vision"}  # model_type -> its vision_config's
VISION_PREFIX = "model.vision_model."
TEXT_PREFIX = "model.text_model."
PROJECTOR_WEIGHT = "model.connector.modality_projection.proj.weight"
LANCZOS = 1  # PIL's resample code; the processor's default


# ----------------------------------------------------------------------------------------------------------
# The folder's JSON files


def read_optional_json(path: Path) -> dict[str, Any]:
    return read_json_object(path) if path.is_file() else {}


def read_chat_template(folder: Path) -> str:
    """The chat template, wherever transformers saved it: chat_template.jinja, chat_template.json, or the
    processor or tokenizer config."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        template = read_optional_json(folder / name).get("chat_template")
        if isinstance(template, str) and template:
            return template
    raise UsageError(f"{folder} has no chat template (chat_template.jinja, chat_template.json or a config's "
                     "'chat_template')")


def image_processing(folder: Path) -> dict[str, Any]:
    """The image processor's settings (preprocessor_config.json, or processor_config.json's image_processor)."""
    settings = read_optional_json(folder / "preprocessor_config.json")
    if not settings:
        settings = read_optional_json(folder / "processor_config.json").get("image_processor") or {}
    if not settings:
        raise UsageError(f"{folder} has no preprocessor_config.json (the image processor's settings)")
    return settings


# ----------------------------------------------------------------------------------------------------------
# Config translation


def config_from_idefics3(hf: dict[str, Any], processor: dict[str, Any], folder: Path) -> VLMConfig:
    """A VLMConfig with the shapes and preprocessing of an Idefics3/SmolVLM `config.json` and image processor."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UsageError(f"{folder}: model type {model_type!r} is not an Idefics3/SmolVLM model "
                         f"(expected one of {sorted(MODEL_TYPES)})")
    text, vision = hf.get("text_config"), hf.get("vision_config")
    if not isinstance(text, dict) or not isinstance(vision, dict):
        raise UsageError(f"{folder / 'config.json'} lacks text_config or vision_config")
    text = {"model_type": "llama", **text}
    vision = {**vision, "model_type": "siglip_vision_model"}  # the same tower, under the name hf_import reads
    lm = hf_import.lm_config_from_hf(text)
    if "tie_word_embeddings" in hf and "tie_word_embeddings" not in text:
        lm.tie_embeddings = bool(hf["tie_word_embeddings"])
    tower = hf_import.vision_config_from_hf(vision)
    for key in ("size", "max_image_size"):
        if not isinstance(processor.get(key), dict) or not processor[key].get("longest_edge"):
            raise UsageError(f"{folder}: the image processor's {key} has no longest_edge")
    square = processor["max_image_size"]["longest_edge"]
    if square != tower.image_size:
        raise UsageError(f"{folder}: the processor's max_image_size {square} is not the vision tower's image_size "
                         f"{tower.image_size}")
    if processor.get("resample", LANCZOS) != LANCZOS:
        raise UsageError(f"{folder}: resample {processor['resample']} is not supported (Lanczos, 1, only)")
    if processor.get("do_rescale", True) is False or processor.get("rescale_factor", 1 / 255) != 1 / 255:
        raise UsageError(f"{folder}: only rescaling by 1/255 is supported")
    normalize = processor.get("do_normalize", True)
    mean = processor.get("image_mean", [0.5, 0.5, 0.5]) if normalize else [0.0, 0.0, 0.0]
    std = processor.get("image_std", [0.5, 0.5, 0.5]) if normalize else [1.0, 1.0, 1.0]
    try:
        return VLMConfig(
            lm=lm, vision=tower, pixel_shuffle=int(hf.get("scale_factor", 2)), projector="linear",
            image_token_id=int(hf["image_token_id"]), image_mean=[float(m) for m in mean],
            image_std=[float(s) for s in std], resize="idefics3",
            longest_edge=int(processor["size"]["longest_edge"]), image_markup="idefics3",
            image_splitting=bool(processor.get("do_image_splitting", False)),
        )
    except (KeyError, ValueError) as error:
        raise UsageError(f"{folder}: config does not fit an mmllm model: {error}") from error


# ----------------------------------------------------------------------------------------------------------
# Name table: our parameter name -> (full Idefics3 name, expected shape)


def idefics3_weight_table(config: VLMConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    table = {ours: (VISION_PREFIX + theirs, shape)
             for ours, (theirs, shape) in hf_import.siglip_weight_table(config.vision).items()}
    width = config.vision.dim * config.pixel_shuffle**2
    table["projector.proj.weight"] = (PROJECTOR_WEIGHT, (config.lm.dim, width))
    for ours, (theirs, shape) in hf_import.llama_weight_table(config.lm).items():
        # The head sits at the top level ('lm_head.weight'), beside 'model.text_model.*'.
        table[ours] = (theirs if ours == "lm.lm_head.weight" else TEXT_PREFIX + theirs, shape)
    return table


# ----------------------------------------------------------------------------------------------------------
# The whole import


def load_idefics3(folder: str | Path) -> tuple[VLMConfig, dict[str, torch.Tensor], Any]:
    """(config, weights under our names, tokenizer) of an Idefics3/SmolVLM folder; UsageError naming what is wrong."""
    from mmllm.formats.model_folder import read_tokenizer_as_is

    folder = Path(folder)
    hf = hf_import.read_hf_config(folder)
    processor = image_processing(folder)
    config = config_from_idefics3(hf, processor, folder)
    config.chat_template = read_chat_template(folder)

    tokenizer_path = folder / "tokenizer.json"  # only the fast tokenizer's file is read
    tokenizer = read_tokenizer_as_is(tokenizer_path)
    config.pad_token_id, config.eos_token_ids = special_ids(hf, folder, tokenizer)
    ids = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    if ids > config.lm.vocab_size:
        raise UsageError(f"{tokenizer_path} has ids up to {ids - 1} but the model embeds {config.lm.vocab_size}")
    expected = read_optional_json(folder / "processor_config.json").get("image_seq_len")
    if expected is not None and expected != config.tokens_per_image:
        raise UsageError(f"{folder}: processor image_seq_len {expected} but the shapes give "
                         f"{config.tokens_per_image} image tokens")

    files = hf_import.safetensors_files(folder)
    table = idefics3_weight_table(config)
    ignored = ("model.vision_model.head.",) + (("lm_head.",) if config.lm.tie_embeddings else ())
    hf_import.check_nothing_left_over(list(files), {theirs for theirs, _ in table.values()}, "", ignored, folder)
    return config, hf_import.rename_and_check(files, table, "", folder), tokenizer


def special_ids(hf: dict[str, Any], folder: Path, tokenizer: Any) -> tuple[int, list[int]]:
    """(pad id, generation stop ids): `<end_of_utterance>` ends a turn, then the eos ids of generation_config.json
    (where transformers' generate reads them) and of the text model."""
    text = hf.get("text_config") or {}
    generation = read_optional_json(folder / "generation_config.json")
    for token in IDEFICS3_IMAGE_OPEN:
        if tokenizer.token_to_id(token) is None:
            raise UsageError(f"{folder}/tokenizer.json lacks {token}, which Idefics3's image markup needs")
    stops = [tokenizer.token_to_id(END_OF_UTTERANCE)] if tokenizer.token_to_id(END_OF_UTTERANCE) is not None else []
    for eos in (generation.get("eos_token_id"), text.get("eos_token_id", hf.get("eos_token_id"))):
        for value in eos if isinstance(eos, list) else [eos]:
            if isinstance(value, int) and value not in stops:
                stops.append(value)
    if not stops:
        raise UsageError(f"{folder}: no end-of-turn or eos token found (generation would never stop)")
    pad = text.get("pad_token_id")
    if not isinstance(pad, int):
        pad = hf.get("pad_token_id")
    if not isinstance(pad, int):
        pad = stops[-1]
    return pad, stops


# ----------------------------------------------------------------------------------------------------------
# Export


VISION_ACTIVATIONS = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}  # ours -> transformers' hidden_act


def not_exportable(config: VLMConfig) -> str | None:
    """Why a model has no Idefics3 counterpart (the option and what makes it exportable), or None."""
    if config.projector != "linear":
        return "the MLP projector has no Idefics3 counterpart; train with model.projector linear"
    if config.image_positions != "none":
        return "learned image-token rows and columns have no Idefics3 counterpart; train with model.image_positions none"
    if config.attention != "causal":
        return "prefix attention has no Idefics3 counterpart; train with model.attention causal"
    if config.lm.qk_norm:
        return "QK-norm has no Llama counterpart; train with model.lm.qk_norm false"
    if config.lm.attention_bias:
        return "q/k/v biases have no Llama counterpart (Llama's attention_bias adds o_proj's too)"
    if config.image_markup != "idefics3":
        return "images without Idefics3's markup tokens cannot be prompted by its processor; use image_markup idefics3"
    if config.resize != "idefics3":
        return f"resize {config.resize!r} is not Idefics3's processor; use resize idefics3 with longest_edge"
    if config.chat_template is None:
        return ("mmllm's own chat template is not written as Jinja; export a model that carries its chat template "
                "(one imported with mmllm build --from-hf, or fine-tuned from one)")
    return None


def idefics3_config_json(config: VLMConfig, tokenizer: Any, dtype: torch.dtype) -> dict[str, Any]:
    """The config.json transformers' Idefics3Config reads, for this model."""
    lm, vision = config.lm, config.vision
    text = {
        "model_type": "llama", "vocab_size": lm.vocab_size, "hidden_size": lm.dim, "intermediate_size": lm.mlp_dim,
        "num_hidden_layers": lm.n_layers, "num_attention_heads": lm.n_heads, "num_key_value_heads": lm.n_kv_heads,
        "head_dim": lm.head_dim, "hidden_act": "silu", "max_position_embeddings": lm.max_seq_len,
        "rms_norm_eps": lm.norm_eps, "rope_parameters": {"rope_theta": lm.rope_theta, "rope_type": "default"},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": lm.tie_embeddings,
        "pad_token_id": config.pad_token_id, "eos_token_id": config.eos_token_ids[-1],
    }
    tower = {
        "model_type": "idefics3_vision", "hidden_size": vision.dim, "intermediate_size": vision.mlp_dim,
        "num_hidden_layers": vision.n_layers, "num_attention_heads": vision.n_heads, "num_channels": 3,
        "image_size": vision.image_size, "patch_size": vision.patch_size,
        "hidden_act": VISION_ACTIVATIONS[vision.activation], "layer_norm_eps": vision.norm_eps,
    }
    return {
        "architectures": ["Idefics3ForConditionalGeneration"], "model_type": "idefics3",
        "image_token_id": config.image_token_id, "scale_factor": config.pixel_shuffle,
        "tie_word_embeddings": lm.tie_embeddings, "dtype": str(dtype).removeprefix("torch."),
        "text_config": text, "vision_config": tower,
    }


def processor_files(config: VLMConfig, tokenizer: Any) -> dict[str, Any]:
    """processor_config.json (with the image processor), tokenizer_config.json and generation_config.json."""
    image_processor = {
        "image_processor_type": "Idefics3ImageProcessor", "do_convert_rgb": True, "do_resize": True,
        "size": {"longest_edge": config.longest_edge}, "max_image_size": {"longest_edge": config.vision.image_size},
        "resample": LANCZOS, "do_image_splitting": config.image_splitting, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(config.image_mean), "image_std": list(config.image_std),
        "do_pad": True,
    }
    stop = tokenizer.id_to_token(config.eos_token_ids[0])
    return {
        "processor_config.json": {"processor_class": "Idefics3Processor", "image_seq_len": config.tokens_per_image,
                                  "image_processor": image_processor},
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast", "processor_class": "Idefics3Processor",
            "eos_token": stop, "pad_token": tokenizer.id_to_token(config.pad_token_id),
            "extra_special_tokens": ["<fake_token_around_image>", "<image>", END_OF_UTTERANCE],
            "model_max_length": config.lm.max_seq_len,
        },
        "generation_config.json": {"eos_token_id": list(config.eos_token_ids), "pad_token_id": config.pad_token_id},
    }


def idefics3_tensors(model: torch.nn.Module, config: VLMConfig) -> dict[str, torch.Tensor]:
    """The model's weights under their transformers Idefics3 names, each shape checked against the config."""
    state = model.state_dict()
    tensors = {}
    for ours, (theirs, shape) in idefics3_weight_table(config).items():
        tensor = state[ours]
        if tuple(tensor.shape) != shape:
            raise UsageError(f"cannot export: {ours} has shape {tuple(tensor.shape)}, the config implies {shape}")
        tensors[theirs] = tensor.detach().to("cpu").contiguous()
    return tensors


def export_idefics3(model: torch.nn.Module, tokenizer: Any, config: VLMConfig, out: str | Path) -> Path:
    """Write `out` as a transformers Idefics3 folder; UsageError (one line) for a model it cannot express."""
    import json

    from safetensors.torch import save_file

    reason = not_exportable(config)
    if reason:
        raise UsageError(f"cannot export to transformers: {reason}")
    out = Path(out)
    tensors = idefics3_tensors(model, config)
    dtype = next(t.dtype for t in tensors.values() if t.is_floating_point())
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").write_text(config.chat_template)
    # config.json last: a folder an interrupted export left is not mistaken for a model.
    files = {**processor_files(config, tokenizer), "config.json": idefics3_config_json(config, tokenizer, dtype)}
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
    return out
