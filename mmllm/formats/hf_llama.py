"""Import Hugging Face checkpoints from folders on disk: a Llama-family language model and a SigLIP vision tower.

Only `config.json` and safetensors are read (one `model.safetensors`, or the shards that
`model.safetensors.index.json` lists, as SmolLM2 ships them); `transformers` is never imported. Weight names
are translated by explicit tables, and every tensor's shape is checked against the shape its config implies,
nanoGPT-style: nothing is matched by guesswork.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from mmllm.config import LMConfig, VisionConfig
from mmllm.errors import UsageError
from mmllm.user_files import read_json_object

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

# model_type values whose weights use the Llama layout (same names, same rotary convention).
LLAMA_FAMILY = ("llama", "mistral", "qwen2")
# HF activation name -> VisionConfig.activation. gelu_new/gelu_pytorch_tanh are both the tanh approximation.
VISION_ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}

# Per-layer weights of an HF Llama decoder layer; ours carry the same suffixes under `lm.layers.{i}.`.
LLAMA_LAYER_WEIGHTS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
LLAMA_LAYER_BIASES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")

# Per-layer weights of an HF SigLIP encoder layer; ours carry the same suffixes under `vision.encoder.layers.{i}.`.
SIGLIP_LAYER_WEIGHTS = tuple(
    f"{module}.{kind}"
    for module in (
        "layer_norm1", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
        "layer_norm2", "mlp.fc1", "mlp.fc2",
    )
    for kind in ("weight", "bias")
)


@dataclass
class PretrainedLM:
    """A pretrained language model as read from a file (a Hugging Face folder, or GGUF in mmllm.formats.gguf):
    its shape, its weights under our `lm.*` names, its tokenizer, and the ids and chat template it was made with."""

    config: LMConfig
    tensors: dict[str, torch.Tensor]
    tokenizer: Any  # tokenizers.Tokenizer, as the checkpoint has it (nothing added)
    eos_token_ids: list[int]  # generation stops at any of these: end of turn first, then end of text
    pad_token_id: int
    chat_template: str | None
    name: str


# ----------------------------------------------------------------------------------------------------------
# Reading a Hugging Face folder


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """The `config.json` of a Hugging Face model folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder / 'config.json'} not found: {folder} is not a Hugging Face model folder")
    return read_json_object(folder / "config.json")


def safetensors_files(folder: str | Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, for one file or a sharded checkpoint."""
    folder = Path(folder)
    single, index_path = folder / SAFETENSORS_FILE, folder / SAFETENSORS_INDEX
    if single.is_file():
        return {name: single for name in safetensors_keys(single)}
    if index_path.is_file():
        weight_map = read_json_object(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UsageError(f"{index_path} has no 'weight_map'")
        files = {name: folder / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise UsageError(f"{shard} (a shard listed in {index_path}) not found")
        return files
    raise UsageError(
        f"no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} in {folder} "
        "(only safetensors checkpoints are read; convert pytorch_model.bin with transformers' save_pretrained)"
    )


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names of one safetensors file; an unreadable file is a UsageError naming it."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return list(file.keys())
    except Exception as error:  # safetensors raises its own error types for broken headers
        raise UsageError(f"{path} is not a readable safetensors file: {error}") from error


def read_tensors(files: dict[str, Path], names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors, opening each shard once and reading only what is asked for."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for path, file_names in by_file.items():
        try:
            with safe_open(str(path), framework="pt") as file:
                for name in file_names:
                    tensors[name] = file.get_tensor(name)
        except Exception as error:  # a truncated or corrupted shard
            raise UsageError(f"{path} is not a readable safetensors file: {error}") from error
    return tensors


def find_prefix(names: list[str], suffix: str, exclude: tuple[str, ...] = ()) -> str:
    """The prefix in front of `suffix` in a checkpoint ('model.', 'vision_model.', '' ...), which must be unique."""
    prefixes = {
        name[: -len(suffix)] for name in names
        if name.endswith(suffix) and (name == suffix or name[: -len(suffix)].endswith("."))
        and not name.startswith(exclude)
    }
    if len(prefixes) != 1:
        found = "none" if not prefixes else ", ".join(sorted(repr(p + suffix) for p in prefixes))
        raise UsageError(f"expected exactly one '*{suffix}' tensor in the checkpoint, found {found}")
    return prefixes.pop()


# ----------------------------------------------------------------------------------------------------------
# Config translation


def lm_config_from_hf(hf: dict[str, Any]) -> LMConfig:
    """An LMConfig with the shapes of a Hugging Face Llama-family `config.json` (LlamaConfig fields)."""
    model_type = hf.get("model_type")
    if model_type not in LLAMA_FAMILY:
        raise UsageError(f"language model type {model_type!r} is not supported; expected one of {LLAMA_FAMILY}")
    if hf.get("hidden_act", "silu") != "silu":
        raise UsageError(f"LM activation {hf['hidden_act']!r} is not supported (SwiGLU with silu only)")
    if hf.get("mlp_bias"):
        raise UsageError("LM MLP biases (mlp_bias: true) are not supported")
    if model_type != "qwen2" and hf.get("attention_bias"):
        # Llama's attention_bias puts a bias on o_proj as well; our attention has q/k/v biases only (Qwen2's).
        raise UsageError(
            "Llama attention_bias (biases on q, k, v and o_proj) is not supported; only Qwen2-style q/k/v biases are"
        )
    if hf.get("use_sliding_window") or (model_type == "mistral" and hf.get("sliding_window") is not None):
        raise UsageError("sliding-window attention is not supported")
    # transformers >= 5 keeps rope_theta and the scaling type in rope_parameters; older configs use
    # top-level rope_theta and rope_scaling.
    rope = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise UsageError(
            f"rope scaling {rope_type!r} is not supported (only plain rotary embeddings with rope_theta are)"
        )
    rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    return LMConfig(
        vocab_size=hf["vocab_size"],
        dim=dim,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        mlp_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=float(rope_theta),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),  # transformers' default when not stated
        # Qwen2 always has q/k/v biases and does not state it.
        attention_bias=model_type == "qwen2",
        head_dim=hf.get("head_dim") or dim // n_heads,
    )


def vision_config_from_hf(hf: dict[str, Any]) -> VisionConfig:
    """A VisionConfig from a SigLIP `config.json`: a full SiglipModel (its vision_config) or a siglip_vision_model."""
    model_type = hf.get("model_type")
    if model_type == "siglip":
        vision = hf.get("vision_config")
        if not isinstance(vision, dict):
            raise UsageError("SigLIP config.json has no vision_config")
    elif model_type == "siglip_vision_model":
        vision = hf
    else:
        raise UsageError(
            f"vision model type {model_type!r} is not supported; expected 'siglip' or 'siglip_vision_model'"
        )
    # Fields left out of a SigLIP config take SiglipVisionConfig's defaults.
    activation = vision.get("hidden_act", "gelu_pytorch_tanh")
    if activation not in VISION_ACTIVATIONS:
        raise UsageError(
            f"vision activation {activation!r} is not supported; expected one of {list(VISION_ACTIVATIONS)}"
        )
    if vision.get("num_channels", 3) != 3:
        raise UsageError(f"vision tower expects {vision['num_channels']} image channels; only RGB (3) is supported")
    return VisionConfig(
        image_size=vision.get("image_size", 224),
        patch_size=vision.get("patch_size", 16),
        dim=vision.get("hidden_size", 768),
        n_layers=vision.get("num_hidden_layers", 12),
        n_heads=vision.get("num_attention_heads", 12),
        mlp_dim=vision.get("intermediate_size", 3072),
        norm_eps=float(vision.get("layer_norm_eps", 1e-6)),
        activation=VISION_ACTIVATIONS[activation],
    )


# ----------------------------------------------------------------------------------------------------------
# Name tables: our parameter name -> (HF name without its prefix, expected shape)


def llama_weight_table(config: LMConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Our `lm.*` names -> HF Llama names (after the 'model.' prefix; lm_head is top level) and shapes."""
    dim, head_dim, mlp_dim = config.dim, config.head_dim, config.mlp_dim
    q_dim, kv_dim = config.n_heads * head_dim, config.n_kv_heads * head_dim
    layer_shapes = {
        "input_layernorm.weight": (dim,),
        "self_attn.q_proj.weight": (q_dim, dim),
        "self_attn.k_proj.weight": (kv_dim, dim),
        "self_attn.v_proj.weight": (kv_dim, dim),
        "self_attn.o_proj.weight": (dim, q_dim),
        "post_attention_layernorm.weight": (dim,),
        "mlp.gate_proj.weight": (mlp_dim, dim),
        "mlp.up_proj.weight": (mlp_dim, dim),
        "mlp.down_proj.weight": (dim, mlp_dim),
        "self_attn.q_proj.bias": (q_dim,),
        "self_attn.k_proj.bias": (kv_dim,),
        "self_attn.v_proj.bias": (kv_dim,),
    }
    suffixes = LLAMA_LAYER_WEIGHTS + (LLAMA_LAYER_BIASES if config.attention_bias else ())
    table = {"lm.embed_tokens.weight": ("embed_tokens.weight", (config.vocab_size, dim))}
    for i in range(config.n_layers):
        for suffix in suffixes:
            table[f"lm.layers.{i}.{suffix}"] = (f"layers.{i}.{suffix}", layer_shapes[suffix])
    table["lm.norm.weight"] = ("norm.weight", (dim,))
    if not config.tie_embeddings:
        table["lm.lm_head.weight"] = ("lm_head.weight", (config.vocab_size, dim))
    return table


def siglip_weight_table(config: VisionConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Our `vision.*` names -> HF SigLIP vision names (after the 'vision_model.' prefix) and shapes.

    The attention-pooling head (`head.*`) and, in a full SiglipModel, the text tower are not imported.
    """
    dim, mlp_dim, patch = config.dim, config.mlp_dim, config.patch_size
    layer_shapes = {"mlp.fc1.weight": (mlp_dim, dim), "mlp.fc1.bias": (mlp_dim,), "mlp.fc2.weight": (dim, mlp_dim)}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        layer_shapes[f"self_attn.{proj}.weight"] = (dim, dim)
    table = {
        "vision.embeddings.patch_embedding.weight": ("embeddings.patch_embedding.weight", (dim, 3, patch, patch)),
        "vision.embeddings.patch_embedding.bias": ("embeddings.patch_embedding.bias", (dim,)),
        "vision.embeddings.position_embedding.weight": (
            "embeddings.position_embedding.weight", (config.grid_size**2, dim),
        ),
    }
    for i in range(config.n_layers):
        for suffix in SIGLIP_LAYER_WEIGHTS:
            # Every bias and LayerNorm parameter not listed above is a (dim,) vector.
            shape = layer_shapes.get(suffix, (dim,))
            table[f"vision.encoder.layers.{i}.{suffix}"] = (f"encoder.layers.{i}.{suffix}", shape)
    table["vision.post_layernorm.weight"] = ("post_layernorm.weight", (dim,))
    table["vision.post_layernorm.bias"] = ("post_layernorm.bias", (dim,))
    return table


def check_nothing_left_over(
    names: list[str], imported: set[str], prefix: str, ignored: tuple[str, ...], folder: Path
) -> None:
    """Refuse a checkpoint holding tensors under `prefix` that no table entry reads (e.g. an o_proj bias we lack).

    Without this check, a weight the model has no place for would be dropped and the import silently wrong.
    """
    left_over = sorted(
        name for name in names
        if name.startswith(prefix) and name not in imported and not name[len(prefix):].startswith(ignored)
    )
    if left_over:
        shown = ", ".join(left_over[:5]) + (f", ... ({len(left_over)} in all)" if len(left_over) > 5 else "")
        raise UsageError(f"{folder}: checkpoint has tensors this model has no place for: {shown}")


def rename_and_check(
    files: dict[str, Path], table: dict[str, tuple[str, tuple[int, ...]]], prefix: str, folder: Path
) -> dict[str, torch.Tensor]:
    """Read the table's tensors under our names, checking that each exists and has the shape its config implies."""
    missing = [prefix + theirs for theirs, _ in table.values() if prefix + theirs not in files]
    if missing:
        raise UsageError(
            f"{folder}: checkpoint lacks {len(missing)} tensors its config.json implies, e.g. {missing[:3]}"
        )
    tensors = read_tensors(files, [prefix + theirs for theirs, _ in table.values()])
    renamed = {}
    for ours, (theirs, shape) in table.items():
        tensor = tensors[prefix + theirs]
        if tuple(tensor.shape) != shape:
            raise UsageError(
                f"{folder}: tensor {prefix + theirs} has shape {tuple(tensor.shape)}, but config.json implies {shape}"
            )
        renamed[ours] = tensor
    return renamed


# ----------------------------------------------------------------------------------------------------------
# Whole imports


def load_hf_lm(folder: str | Path) -> tuple[LMConfig, dict[str, torch.Tensor]]:
    """The LMConfig and the `lm.*` weights (our names, checkpoint dtype) of a Hugging Face Llama-family folder."""
    folder = Path(folder)
    config = lm_config_from_hf(read_hf_config(folder))
    files = safetensors_files(folder)
    # LlamaForCausalLM stores the decoder under 'model.'; a bare LlamaModel has no prefix.
    prefix = find_prefix(list(files), "embed_tokens.weight")
    table = llama_weight_table(config)
    # Rotary frequencies are recomputed from rope_theta, never read.
    check_nothing_left_over(
        list(files), {prefix + theirs for theirs, _ in table.values()}, prefix, ("rotary_emb.", "lm_head."), folder
    )
    if not config.tie_embeddings:
        # The head sits at the top level of a *ForCausalLM ('lm_head.weight' beside 'model.*'), not in the decoder.
        head = {"lm.lm_head.weight": table.pop("lm.lm_head.weight")}
        tensors = rename_and_check(files, table, prefix, folder)
        tensors.update(rename_and_check(files, head, "", folder))
        return config, tensors
    # Tied: an 'lm_head.weight' some savers still write is the embedding again and is not read.
    return config, rename_and_check(files, table, prefix, folder)


def load_hf_vision(folder: str | Path) -> tuple[VisionConfig, dict[str, torch.Tensor]]:
    """The VisionConfig and the `vision.*` weights of a SigLIP folder (vision model or full SiglipModel)."""
    folder = Path(folder)
    config = vision_config_from_hf(read_hf_config(folder))
    files = safetensors_files(folder)
    # 'vision_model.' in a SiglipModel and in older SiglipVisionModel saves; '' in transformers >= 5 saves.
    prefix = find_prefix(list(files), "embeddings.patch_embedding.weight", exclude=("text_model.",))
    table = siglip_weight_table(config)
    # The attention-pooling head is not part of our encoder; a full SiglipModel's text tower and logit
    # scale/bias lie outside the 'vision_model.' prefix. Without a prefix, those are skipped by name.
    ignored = ("head.",) + (("text_model.", "logit_scale", "logit_bias") if not prefix else ())
    check_nothing_left_over(list(files), {prefix + theirs for theirs, _ in table.values()}, prefix, ignored, folder)
    return config, rename_and_check(files, table, prefix, folder)


def hf_image_normalization(folder: str | Path) -> tuple[list[float], list[float]] | None:
    """(image_mean, image_std) from a folder's `preprocessor_config.json`, or None when it has none."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return None
    data = read_json_object(path)
    mean, std = data.get("image_mean"), data.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        return None
    return [float(m) for m in mean], [float(s) for s in std]


def resize_vocab(lm_weights: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Grow the token embedding (and an untied head) to `vocab_size` rows; each new row is the mean of the old ones.

    Special tokens added to a pretrained tokenizer start at the average embedding, which keeps the first
    logits of a fine-tune in the range of the pretrained ones (a random row would not be).
    """
    resized = dict(lm_weights)
    for name in ("lm.embed_tokens.weight", "lm.lm_head.weight"):
        if name not in resized:
            continue
        weight = resized[name]  # (V_old, dim)
        old_rows = weight.shape[0]
        if vocab_size < old_rows:
            raise ValueError(f"cannot shrink {name} from {old_rows} to {vocab_size} rows")
        mean_row = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)  # (1, dim)
        resized[name] = torch.cat([weight, mean_row.expand(vocab_size - old_rows, -1)], dim=0)  # (V_new, dim)
    return resized


# ----------------------------------------------------------------------------------------------------------
# Export: a language model alone -> a transformers LlamaForCausalLM (Qwen2ForCausalLM with q/k/v biases)
# folder, the inverse of load_hf_lm.


def not_llama_exportable(config: Any) -> str | None:
    """Why a text-only model has no transformers counterpart here, or None."""
    if config.reads_images:
        return "a model with a vision tower exports as Idefics3 (mmllm.formats.hf_idefics3)"
    if config.lm.qk_norm:
        return "QK-norm has no Llama counterpart; train with model.lm.qk_norm false"
    if config.chat_template is None:
        return "mmllm's own chat template is not written as Jinja; export a model that carries its chat template"
    return None


def llama_config_json(config: Any, dtype: torch.dtype) -> dict[str, Any]:
    lm = config.lm
    qwen = lm.attention_bias  # q/k/v biases without o_proj's: Qwen2's layout
    return {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"], "model_type": "qwen2" if qwen else "llama",
        "vocab_size": lm.vocab_size, "hidden_size": lm.dim, "intermediate_size": lm.mlp_dim,
        "num_hidden_layers": lm.n_layers, "num_attention_heads": lm.n_heads, "num_key_value_heads": lm.n_kv_heads,
        "head_dim": lm.head_dim, "hidden_act": "silu", "max_position_embeddings": lm.max_seq_len,
        "rms_norm_eps": lm.norm_eps, "rope_parameters": {"rope_theta": lm.rope_theta, "rope_type": "default"},
        "rope_theta": lm.rope_theta, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": lm.tie_embeddings, "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_ids[0], "dtype": str(dtype).removeprefix("torch."),
    }


def export_llama(model: torch.nn.Module, tokenizer: Any, config: Any, out: str | Path) -> Path:
    """Write `out` as a transformers causal-LM folder; UsageError (one line) for a model it cannot express."""
    import json

    from safetensors.torch import save_file

    reason = not_llama_exportable(config)
    if reason:
        raise UsageError(f"cannot export to transformers: {reason}")
    state = model.state_dict()
    tensors = {}
    for ours, (theirs, shape) in llama_weight_table(config.lm).items():
        if tuple(state[ours].shape) != shape:
            raise UsageError(f"cannot export: {ours} has shape {tuple(state[ours].shape)}, the config implies {shape}")
        name = theirs if theirs == "lm_head.weight" else f"model.{theirs}"
        tensors[name] = state[ours].detach().to("cpu").contiguous()
    dtype = tensors["model.embed_tokens.weight"].dtype
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / SAFETENSORS_FILE), metadata={"format": "pt"})
    tokenizer.save(str(out / "tokenizer.json"))
    files = {
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": config.chat_template,
            "eos_token": tokenizer.id_to_token(config.eos_token_ids[0]),
            "pad_token": tokenizer.id_to_token(config.pad_token_id), "model_max_length": config.lm.max_seq_len,
        },
        "generation_config.json": {"eos_token_id": list(config.eos_token_ids), "pad_token_id": config.pad_token_id},
        "config.json": llama_config_json(config, dtype),  # last: an interrupted export is not taken for a model
    }
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
    return out
