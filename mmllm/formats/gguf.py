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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipelines.chat.image_layout import tile_token
from mmllm.config import VLMConfig
from mmllm.errors import UsageError
from mmllm.formats.hf_idefics3 import idefics3_tensors, not_exportable
from mmllm.formats.hf_llama import PretrainedLM

TYPES = ("f16", "q8_0")  # what `mmllm export --format gguf` writes by default
ALL_TYPES = ("f32", "f16", "q8_0")  # f32: every weight as trained (a round trip is exact)
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
    if kind == "f32" or tensor.dim() <= 1 or name.startswith(("v.position_embd", "v.patch_embd")):
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


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}  # gguf.LlamaFileType's names


def write_language_model(path: Path, tensors: dict[str, torch.Tensor], config: VLMConfig, vocab: Vocabulary,
                         kind: str, name: str, arch: str = "llama") -> None:
    import gguf

    lm = config.lm
    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[kind]))
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
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[kind]))
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
                name: str = "mmllm", kinds: tuple[str, ...] = TYPES) -> list[Path]:
    """Write (language model, mmproj) pairs, one per kind (default F16 and Q8_0), into `out` (a language model
    alone: one file per kind); UsageError (one line) for a model that llama.cpp would run differently. Each file
    is written under a temporary name and renamed when complete."""
    if not config.reads_images:
        return export_gguf_text(model, tokenizer, config, out, name, kinds)
    reason = not_gguf_exportable(config, tokenizer)
    if reason:
        raise UsageError(f"cannot export to GGUF: {reason}")
    vocab = gguf_vocabulary(tokenizer, config.lm.vocab_size)
    text, vision = gguf_tensors(model, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in kinds:
        model_file, projector_file = gguf_file_names(kind)
        write_language_model(out / f".{model_file}.partial", text, config, vocab, kind, name)
        write_projector(out / f".{projector_file}.partial", vision, config, kind, name)
        for file_name in (model_file, projector_file):
            os.replace(out / f".{file_name}.partial", out / file_name)
            written.append(out / file_name)
    return written


def gguf_text_tensors(model: torch.nn.Module, config: VLMConfig, arch: str) -> dict[str, torch.Tensor]:
    """A language model alone's tensors under llama.cpp's names (gguf_name_table, the reading table), fp32."""
    state = model.state_dict()
    tensors = {}
    for ours, theirs in gguf_name_table(config.lm, arch).items():
        tensor = state[ours].detach().float().cpu()
        if arch == "llama" and ".self_attn.q_proj." in ours:
            tensor = rotary_pairs_interleaved(tensor, config.lm.n_heads)
        elif arch == "llama" and ".self_attn.k_proj." in ours:
            tensor = rotary_pairs_interleaved(tensor, config.lm.n_kv_heads)
        tensors[theirs] = tensor
    return tensors


def export_gguf_text(model: torch.nn.Module, tokenizer: Any, config: VLMConfig, out: str | Path, name: str,
                     kinds: tuple[str, ...]) -> list[Path]:
    """One GGUF per kind of a language model alone: Llama's layout, or Qwen2's where q/k/v have biases."""
    if config.lm.qk_norm:
        raise UsageError("cannot export to GGUF: QK-norm has no Llama counterpart")
    if config.chat_template is None:
        raise UsageError("cannot export to GGUF: mmllm's own chat template is not written as Jinja")
    arch = "qwen2" if config.lm.attention_bias else "llama"
    vocab = gguf_vocabulary(tokenizer, config.lm.vocab_size)
    tensors = gguf_text_tensors(model, config, arch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in kinds:
        file_name = gguf_file_names(kind)[0]
        write_language_model(out / f".{file_name}.partial", tensors, config, vocab, kind, name, arch)
        os.replace(out / f".{file_name}.partial", out / file_name)
        written.append(out / file_name)
    return written


# ================================================================================================ reading
# A GGUF file in: the inverse of the writing above. Its metadata gives the LMConfig, its tensors (dequantised by
# gguf's own `gguf.quants.dequantize`) go through the same name map back to Hugging Face Llama names and from
# there to ours (mmllm.formats.hf_llama's table), llama.cpp's interleaved q/k rows are put back in rotate-half
# order, and the tokenizer is rebuilt from the vocabulary, merges and token types as a `tokenizers` Tokenizer.

READ_ARCHITECTURES = ("llama", "mistral", "qwen2")  # Mistral's files say "llama"; some older ones "mistral"
READ_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                     "Q6_K")
GGUF_MAGIC = b"GGUF"
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types of special and added tokens


def open_gguf(path: str | Path):
    """gguf's reader over the file, after checking the magic and that every tensor lies inside the file; a file
    that is not GGUF, or ends early, is a UsageError naming it and the byte offset."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic != GGUF_MAGIC:
        raise UsageError(f"{path} is not a GGUF file: bytes 0-3 are {magic!r}, not {GGUF_MAGIC!r}")

    class CheckedReader(gguf.GGUFReader):
        def _build_tensors(self, start_offs: int, fields: list) -> None:
            for field in fields:
                _, name, _, dims, raw_type, offset = field.parts
                qtype = gguf.GGMLQuantizationType(int(raw_type[0]))
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
                end = int(start_offs + offset[0]) + int(np.prod(dims)) * type_size // block
                if end > size:
                    raise UsageError(f"{path} is truncated: tensor {bytes(name).decode()} needs bytes up to {end}, "
                                     f"but the file ends at byte {size}")
            super()._build_tensors(start_offs, fields)

    try:
        return CheckedReader(path)
    except UsageError:
        raise
    except (ValueError, IndexError, KeyError, OverflowError) as error:  # the header itself is cut or garbled
        raise UsageError(f"{path} is not a readable GGUF file: its header is cut short or corrupt before byte "
                         f"{size} ({type(error).__name__}: {str(error)[:80]})") from None


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _decimal(value: float) -> float:
    """A float32 from the file as the shortest decimal that is that float32 (9.999999747e-06 -> 1e-05), as the
    model's own config.json wrote it."""
    return float(str(np.float32(value)))


def lm_config_from_gguf(reader: Any, path: Path):
    """The LMConfig that the file's `{arch}.*` metadata describes; UsageError (one line) for what mmllm lacks."""
    from mmllm.config import LMConfig

    arch = _field(reader, "general.architecture")
    if arch not in READ_ARCHITECTURES:
        raise UsageError(f"{path}: architecture {arch!r} is not supported (Llama-family: {', '.join(READ_ARCHITECTURES)})")
    key = lambda name, default=None: _field(reader, f"{arch}.{name}", default)  # noqa: E731
    if key("expert_count"):
        raise UsageError(f"{path}: a mixture of experts ({key('expert_count')} experts) is not supported")
    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", "linear") or (scaling == "linear" and key("rope.scaling.factor", 1.0) != 1.0):
        raise UsageError(f"{path}: rope scaling {scaling!r} is not supported (plain rotary embeddings only)")
    dim, n_heads = key("embedding_length"), key("attention.head_count")
    head_dim = key("attention.key_length", dim // n_heads)
    if key("attention.value_length", head_dim) != head_dim or key("rope.dimension_count", head_dim) != head_dim:
        raise UsageError(f"{path}: values or rotary dimensions narrower than the keys' are not supported")
    names = {tensor.name for tensor in reader.tensors}
    vocab = key("vocab_size") or len(_field(reader, "tokenizer.ggml.tokens", []))
    return LMConfig(
        vocab_size=int(vocab), dim=int(dim), n_layers=int(key("block_count")), n_heads=int(n_heads),
        n_kv_heads=int(key("attention.head_count_kv", n_heads)), mlp_dim=int(key("feed_forward_length")),
        max_seq_len=int(key("context_length", 2048)), rope_theta=_decimal(key("rope.freq_base", 10000.0)),
        norm_eps=_decimal(key("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in names, attention_bias="blk.0.attn_q.bias" in names,
        head_dim=int(head_dim),
    )


def gguf_name_table(config: Any, arch: str) -> dict[str, str]:
    """Our `lm.*` names -> the file's tensor names, through Hugging Face Llama names and gguf's own map."""
    import gguf

    from mmllm.formats.hf_llama import llama_weight_table

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2 if arch == "qwen2" else gguf.MODEL_ARCH.LLAMA,
                                     config.n_layers)
    table = {}
    for ours, (theirs, _shape) in llama_weight_table(config).items():
        hf_name = "lm_head.weight" if theirs == "lm_head.weight" else f"model.{theirs}"
        table[ours] = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    return table


def rotary_pairs_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of rotary_pairs_interleaved: llama.cpp's q/k rows (dims 2i, 2i + 1 rotate together) ->
    rotate-half order (dims i and i + head_dim/2); works on biases (rows,) too."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, -1).transpose(1, 2).reshape(weight.shape)


def gguf_lm_tensors(reader: Any, config: Any, path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the file under our name, float32, shapes checked; UsageError for a tensor type mmllm does
    not read, a tensor missing, or one left over (a weight the model would silently lack)."""
    import gguf

    from mmllm.formats.hf_llama import llama_weight_table

    arch = _field(reader, "general.architecture")
    by_name = {tensor.name: tensor for tensor in reader.tensors}
    shapes = {ours: shape for ours, (_, shape) in llama_weight_table(config).items()}
    table = gguf_name_table(config, arch)
    left_over = sorted(set(by_name) - set(table.values()))
    if left_over:
        raise UsageError(f"{path}: tensors this model has no place for: {', '.join(left_over[:4])}"
                         + (f", ... ({len(left_over)} in all)" if len(left_over) > 4 else ""))
    tensors = {}
    for ours, theirs in table.items():
        if theirs not in by_name:
            raise UsageError(f"{path}: tensor {theirs} is missing (its metadata implies it)")
        tensor = by_name[theirs]
        if tensor.tensor_type.name not in READ_TENSOR_TYPES:
            raise UsageError(f"{path}: tensor {theirs} is of type {tensor.tensor_type.name}, which mmllm does not "
                             f"read ({', '.join(READ_TENSOR_TYPES)})")
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        value = torch.from_numpy(np.array(data, dtype=np.float32)).reshape(shapes[ours])  # a copy: the file is mapped
        if arch != "qwen2" and ".self_attn.q_proj." in ours:  # llama.cpp's converter permutes Llama's q and k
            value = rotary_pairs_halves(value, config.n_heads)
        elif arch != "qwen2" and ".self_attn.k_proj." in ours:
            value = rotary_pairs_halves(value, config.n_kv_heads)
        tensors[ours] = value
    return tensors


# llama.cpp's BPE pre-tokenizers (src/llama-vocab.cpp, llm_tokenizer_bpe): each pre-type is a list of regexes
# applied one after another, every match and every stretch between matches becoming a piece of its own (a
# `tokenizers` Split, behavior "isolated"), then GPT-2's bytes-to-characters map. llama.cpp writes GPT-2's regex
# without its final `|\s+`, but its hand-written matcher for that regex behaves as if it were there.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_REGEXES = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "gpt-2": (GPT2_REGEX,),
    "smollm": (r"\p{N}", GPT2_REGEX),  # digits one by one, then GPT-2's regex
    "llama3": (LLAMA3_REGEX,),  # numbers in threes
    "qwen2": (LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}"),),  # digits one by one
}
# Other names llama.cpp gives the same pre-type (and so the same regexes).
PRE_TOKENIZER_ALIASES = {"llama-bpe": "llama3", "llama-v3": "llama3", "falcon3": "llama3", "megrez": "qwen2",
                         "deepseek-r1-qwen": "qwen2", "stablelm2": "qwen2", "phi-2": "gpt-2", "starcoder": "smollm"}
NORMAL, UNKNOWN, BYTE = 1, 2, 6  # llama.cpp's token types of plain pieces, the unknown token and <0x..> bytes


def _pre_tokenizer(name: str | None, path: Path):
    """The `tokenizers` pre-tokenizer that splits text as llama.cpp's pre-type `name` does. No name (an old file):
    llama.cpp's 'default' regexes, as llama.cpp itself falls back to, said in one line on stderr."""
    from tokenizers import Regex, pre_tokenizers

    if name is None:
        print(f"{path}: no tokenizer.ggml.pre; splitting text with llama.cpp's 'default' pre-tokenizer, as llama.cpp "
              f"does (it warns that generation quality will be degraded)", file=sys.stderr)
        name = "default"
    pre_type = PRE_TOKENIZER_ALIASES.get(name, name)
    if pre_type not in PRE_TOKENIZER_REGEXES:
        raise UsageError(f"{path}: pre-tokenizer {name!r} has no mapping here "
                         f"({', '.join(sorted({*PRE_TOKENIZER_REGEXES, *PRE_TOKENIZER_ALIASES}))} do)")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre_type == "gpt-2":  # the forms mmllm's GGUF export recognises, so that a file read can be written again
        return byte_level
    if pre_type == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return pre_tokenizers.Sequence([*(pre_tokenizers.Split(Regex(regex), behavior="isolated")
                                      for regex in PRE_TOKENIZER_REGEXES[pre_type]),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _bpe_tokenizer(reader: Any, path: Path, tokens: list[str], pre: str | None):
    """A byte-level BPE vocabulary ('gpt2'): its merges, split by its pre-tokenizer. For llama3's pre-type
    llama.cpp takes a piece that is a token whole before merging (ignore_merges), as Hugging Face's Llama 3 does."""
    from tokenizers import Tokenizer, decoders, models

    merges = [tuple(merge.split(" ", 1)) for merge in _field(reader, "tokenizer.ggml.merges", [])]
    tokenizer = Tokenizer(models.BPE(vocab={token: index for index, token in enumerate(tokens)}, merges=merges,
                                     fuse_unk=False, byte_fallback=False,
                                     ignore_merges=PRE_TOKENIZER_ALIASES.get(pre, pre) == "llama3"))
    tokenizer.pre_tokenizer = _pre_tokenizer(pre, path)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _spm_tokenizer(reader: Any, path: Path, tokens: list[str], types: list[int]):
    """A SentencePiece vocabulary ('llama': Llama 2's, Mistral's), tokenized as llama.cpp's llm_tokenizer_spm does:
    spaces as '▁', one put before the text (add_space_prefix, and after every special or added token), then the
    adjacent pair whose join is the best-scoring token merged first, and characters with no token as their
    <0x..> bytes. That is a BPE whose merges are every two-token split of every token, ranked by the joined
    token's score (Hugging Face's own conversion of Llama's tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = _field(reader, "tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise UsageError(f"{path}: a SentencePiece ('llama') vocabulary without a score for every token")
    index = {token: i for i, token in enumerate(tokens)}
    splits = [(-scores[i], i, token[:cut], token[cut:]) for i, token in enumerate(tokens) if types[i] != BYTE
              for cut in range(1, len(token)) if token[:cut] in index and token[cut:] in index]
    unknown = next((token for token, token_type in zip(tokens, types) if token_type == UNKNOWN), None)
    tokenizer = Tokenizer(models.BPE(vocab=index, merges=[(left, right) for *_, left, right in sorted(splits)],
                                     unk_token=unknown, fuse_unk=False, byte_fallback=True))
    space_prefix = _field(reader, "tokenizer.ggml.add_space_prefix", True)
    tokenizer.normalizer = normalizers.Sequence([*([normalizers.Prepend("▁")] if space_prefix else []),
                                                 normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           *([decoders.Strip(" ", 1, 0)] if space_prefix else [])])
    return tokenizer


def gguf_tokenizer(reader: Any, path: Path):
    """The tokenizer the file describes, as a `tokenizers` Tokenizer that tokenizes as llama.cpp does: a byte-level
    BPE ('gpt2') or a SentencePiece one ('llama'), its control tokens special and its user-defined tokens whole,
    a BOS prepended where llama.cpp prepends one."""
    from tokenizers import AddedToken, processors

    kind = _field(reader, "tokenizer.ggml.model")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    pre = _field(reader, "tokenizer.ggml.pre") or None  # llama.cpp takes an empty name as none
    if kind == "gpt2":
        tokenizer = _bpe_tokenizer(reader, path, tokens, pre)
    elif kind == "llama":
        tokenizer = _spm_tokenizer(reader, path, tokens, types)
    else:
        raise UsageError(f"{path}: tokenizer model {kind!r} is not supported (byte-level BPE, 'gpt2', and "
                         f"SentencePiece, 'llama', are)")
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token, token_type in zip(tokens, types) if token_type == CONTROL])
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token, token_type in zip(tokens, types) if token_type == USER_DEFINED])
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    bos_by_default = kind == "llama" or PRE_TOKENIZER_ALIASES.get(pre, pre) == "llama3"  # as llama.cpp's defaults
    if _field(reader, "tokenizer.ggml.add_bos_token", bos_by_default) and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B", special_tokens=[(tokens[bos], bos)])
    return tokenizer


def read_gguf(path: str | Path) -> PretrainedLM:
    """A Llama-family GGUF file -> PretrainedLM; UsageError (one line, naming the file) for anything it cannot map."""
    path = Path(path)
    reader = open_gguf(path)
    config = lm_config_from_gguf(reader, path)
    tensors = gguf_lm_tensors(reader, config, path)
    tokenizer = gguf_tokenizer(reader, path)
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    eot = _field(reader, "tokenizer.ggml.eot_token_id")
    stops = [int(i) for i in dict.fromkeys(i for i in (eot, eos) if i is not None)]
    if not stops:
        raise UsageError(f"{path}: no end-of-sequence token (generation would never stop)")
    pad = _field(reader, "tokenizer.ggml.padding_token_id", stops[-1])
    return PretrainedLM(config, tensors, tokenizer, stops, int(pad), _field(reader, "tokenizer.chat_template"),
                     str(_field(reader, "general.name", path.stem)))
