"""GGUF export: a model of the Idefics3 shape -> the two files llama.cpp runs, the language model and the vision
projector ("mmproj"): `llama-server -m model-f16.gguf --mmproj mmproj-f16.gguf`.

Written with `gguf` (llama.cpp's own Python writer) under llama.cpp's names: the transformers Idefics3 names
of mmllm.formats.hf_idefics3 go through gguf's tensor-name map, Llama's q/k rows are reordered from transformers'
rotate-half layout to llama.cpp's interleaved rotary pairs (as llama.cpp's converter does), and the tokenizer
is written as a byte-level BPE vocabulary with its merges, token types and chat template. Each of F16 and Q8_0
gives a pair of files; norms, biases and the vision embeddings stay F32, and a matrix whose rows do not split
into Q8_0's blocks of 32 stays F16.

llama.cpp's Idefics3 runtime always splits an image into tiles plus the whole image (its 1 x 1 grid differs
from transformers', which does not split an image that fits one tile), and puts one "\\n\\n" token before the
whole image. So only a model trained with image splitting and a long side larger than one tile, whose
tokenizer has that token and the <row_i_col_j> tokens its grids need, runs there as it runs here; any other
is refused in one line saying why.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipelines.chat.image_layout import tile_token
from mmllm.config import VLMConfig
from mmllm.errors import UsageError
from mmllm.formats.hf_idefics3 import idefics3_tensors, not_exportable

TYPES = ("f16", "q8_0")
Q8_BLOCK = 32


def gguf_file_names(kind: str) -> tuple[str, str]:
    """(language model, vision projector) file names for an F16 or Q8_0 export."""
    return f"model-{kind}.gguf", f"mmproj-{kind}.gguf"


# ---------------------------------------------------------------------------------------------- checks


def llama_cpp_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (its regexes must be the same), or UsageError."""
    model, pre = tokenizer_json.get("model") or {}, tokenizer_json.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or (tokenizer_json.get("decoder") or {}).get("type") != "ByteLevel":
        raise UsageError("cannot export to GGUF: only byte-level BPE tokenizers have a llama.cpp counterpart here")
    if tokenizer_json.get("normalizer"):
        raise UsageError("cannot export to GGUF: llama.cpp's BPE tokenizer applies no normalizer, and this one has one")

    def byte_level(step: dict[str, Any]) -> bool:
        return step.get("type") == "ByteLevel" and step.get("use_regex", True) and not step.get("add_prefix_space")

    if byte_level(pre):
        return "gpt-2"  # GPT-2's regex
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0] == {"type": "Digits", "individual_digits": True} and byte_level(steps[1]):
        return "smollm"  # digits one by one, then GPT-2's regex (SmolLM's)
    raise UsageError(f"cannot export to GGUF: llama.cpp has no pre-tokenizer like this one ({json.dumps(pre)[:80]})")


def not_gguf_exportable(config: VLMConfig, tokenizer: Any) -> str | None:
    """Why llama.cpp would not run this model as mmllm does, or None."""
    reason = not_exportable(config)
    if reason:
        return reason
    tile = config.vision.image_size
    if not config.image_splitting or config.longest_edge <= tile:
        return (f"llama.cpp's Idefics3 runtime always cuts images into tiles; train with model.image_splitting true "
                f"and a longest_edge above the image size {tile}")
    if len(tokenizer.encode("\n\n", add_special_tokens=False).ids) != 1:
        return "llama.cpp puts one '\\n\\n' token before the whole image, and this tokenizer has no such token"
    side = math.ceil(config.longest_edge / tile)
    missing = [tile_token(row, col) for row in range(1, side + 1) for col in range(1, side + 1)
               if tokenizer.token_to_id(tile_token(row, col)) is None]
    if missing:
        return f"the tokenizer lacks {missing[0]}, which a {side} x {side} grid of tiles needs"
    return None


# ---------------------------------------------------------------------------------------------- tensors


def rotary_pairs_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """(heads * head_dim, dim) q or k rows in rotate-half order (dims i and i + head_dim/2 rotate together) ->
    llama.cpp's order (dims 2i and 2i + 1 rotate together)."""
    rows, dim = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, dim).transpose(1, 2).reshape(rows, dim)


def gguf_tensors(model: torch.nn.Module, config: VLMConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(language model, vision projector) tensors under llama.cpp's names, fp32."""
    import gguf

    lm_names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.lm.n_layers)
    vision_names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, config.vision.n_layers)
    text, vision = {}, {}
    for name, tensor in idefics3_tensors(model, config).items():
        tensor = tensor.float()
        if name.startswith("model.text_model.") or name == "lm_head.weight":
            if name.endswith("self_attn.q_proj.weight"):
                tensor = rotary_pairs_interleaved(tensor, config.lm.n_heads)
            elif name.endswith("self_attn.k_proj.weight"):
                tensor = rotary_pairs_interleaved(tensor, config.lm.n_kv_heads)
            table, target, name = lm_names, text, name.replace("model.text_model.", "model.")
        else:
            table, target = vision_names, vision
        new_name = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise UsageError(f"cannot export to GGUF: llama.cpp has no name for {name}")
        target[new_name] = tensor
    return text, vision


def stored(name: str, tensor: torch.Tensor, kind: str):
    """(numpy data, gguf type) of one tensor in an F16 or Q8_0 file."""
    import gguf

    types = gguf.GGMLQuantizationType
    data = tensor.numpy()
    if tensor.dim() <= 1 or name.startswith(("v.position_embd", "v.patch_embd")):
        return data.astype(np.float32), types.F32
    if kind == "q8_0" and data.shape[-1] % Q8_BLOCK == 0:
        return gguf.quants.quantize(data.astype(np.float32), types.Q8_0), types.Q8_0
    return data.astype(np.float16), types.F16


# ---------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Vocabulary:
    """What the language model's GGUF says of its tokenizer, read once for both files."""

    pre: str  # llama.cpp's pre-tokenizer name
    tokens: list[str]  # by id, padded to the embedding's rows
    types: list[int]  # llama.cpp's token types
    merges: list[str]  # "a b"
    bos: int | None  # the BOS the tokenizer adds, if it adds one


def gguf_vocabulary(tokenizer: Any, vocab_size: int) -> Vocabulary:
    """A byte-level BPE tokenizer's vocabulary as llama.cpp reads it; UsageError for one it has no counterpart for."""
    import gguf

    data = json.loads(tokenizer.to_str())
    pre = llama_cpp_pre_tokenizer(data)
    added = {entry["id"]: entry for entry in data.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(vocab_size):
        token = tokenizer.id_to_token(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[index].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in data["model"].get("merges", [])]
    bos = tokenizer.encode("", add_special_tokens=True).ids  # a tokenizer that adds a BOS shows it here
    return Vocabulary(pre, tokens, types, merges, bos[0] if bos else None)


def write_language_model(path: Path, tensors: dict[str, torch.Tensor], config: VLMConfig, vocab: Vocabulary,
                         kind: str, name: str) -> None:
    import gguf

    lm = config.lm
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if kind == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(lm.vocab_size)
    writer.add_context_length(lm.max_seq_len)
    writer.add_embedding_length(lm.dim)
    writer.add_block_count(lm.n_layers)
    writer.add_feed_forward_length(lm.mlp_dim)
    writer.add_head_count(lm.n_heads)
    writer.add_head_count_kv(lm.n_kv_heads)
    writer.add_key_length(lm.head_dim)
    writer.add_value_length(lm.head_dim)
    writer.add_rope_dimension_count(lm.head_dim)
    writer.add_rope_freq_base(lm.rope_theta)
    writer.add_layer_norm_rms_eps(lm.norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    writer.add_add_bos_token(vocab.bos is not None)
    writer.add_bos_token_id(config.eos_token_ids[-1] if vocab.bos is None else vocab.bos)
    writer.add_eos_token_id(config.eos_token_ids[0])
    writer.add_pad_token_id(config.pad_token_id)
    if config.chat_template:
        writer.add_chat_template(config.chat_template)
    for tensor_name, tensor in tensors.items():
        data, dtype = stored(tensor_name, tensor, kind)
        writer.add_tensor(tensor_name, data, raw_dtype=dtype)
    _write(writer)


def write_projector(path: Path, tensors: dict[str, torch.Tensor], config: VLMConfig, kind: str, name: str) -> None:
    import gguf

    vision = config.vision
    writer = gguf.GGUFWriter(path, "clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(f"{name} vision projector")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if kind == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(gguf.VisionProjectorType.IDEFICS3)
    writer.add_vision_projection_dim(config.lm.dim)
    writer.add_vision_image_size(vision.image_size)
    writer.add_vision_patch_size(vision.patch_size)
    writer.add_vision_embedding_length(vision.dim)
    writer.add_vision_feed_forward_length(vision.mlp_dim)
    writer.add_vision_block_count(vision.n_layers)
    writer.add_vision_head_count(vision.n_heads)
    writer.add_vision_attention_layernorm_eps(vision.norm_eps)
    writer.add_vision_image_mean(list(config.image_mean))
    writer.add_vision_image_std(list(config.image_std))
    writer.add_vision_use_gelu(True)  # llama.cpp's tanh GELU; an erf-GELU tower differs by far less than F16
    writer.add_vision_projector_scale_factor(config.pixel_shuffle)
    writer.add_vision_preproc_image_size(config.longest_edge)
    for tensor_name, tensor in tensors.items():
        data, dtype = stored(tensor_name, tensor, kind)
        writer.add_tensor(tensor_name, data, raw_dtype=dtype)
    _write(writer)


def _write(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(model: torch.nn.Module, tokenizer: Any, config: VLMConfig, out: str | Path,
                name: str = "mmllm") -> list[Path]:
    """Write F16 and Q8_0 pairs (language model, mmproj) into `out`; UsageError (one line) for a model that
    llama.cpp would run differently. Each file is written under a temporary name and renamed when complete."""
    reason = not_gguf_exportable(config, tokenizer)
    if reason:
        raise UsageError(f"cannot export to GGUF: {reason}")
    vocab = gguf_vocabulary(tokenizer, config.lm.vocab_size)
    text, vision = gguf_tensors(model, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in TYPES:
        model_file, projector_file = gguf_file_names(kind)
        write_language_model(out / f".{model_file}.partial", text, config, vocab, kind, name)
        write_projector(out / f".{projector_file}.partial", vision, config, kind, name)
        for file_name in (model_file, projector_file):
            os.replace(out / f".{file_name}.partial", out / file_name)
            written.append(out / file_name)
    return written
