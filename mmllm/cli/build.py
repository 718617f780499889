"""Make a model folder: a language model alone from a pretrained one, or a VLM from a preset, optionally with a
pretrained LM and/or SigLIP vision tower.

`--lm FILE.gguf|HF_DIR` without `--preset` writes a text-only model (`vision: null`): the pretrained LM with its
own tokenizer, special ids and chat template (mmllm.formats.pretrained), ready for generate, chat, eval --task
text, serve and fit on text. With `--preset`, the vocabulary size and special-token ids come from the tokenizer
(`--tokenizer`, or the GGUF file's own). A pretrained part brings its own shapes
(they replace the preset's LM or vision config) and weights; when the tokenizer has more tokens than the
pretrained LM (the project's special tokens were added), the embedding grows and the new rows start at the
mean of the pretrained ones. Everything else is freshly initialised. Training starts from the folder with
`model.init_from: MODEL_DIR`.

`--layout smolvlm` lays a preset's VLM out as SmolVLM does, so transformers (Idefics3) and llama.cpp can run it
after training: a linear projector, Idefics3's image markup and resize (no tiles), SmolVLM's tokens added to the
tokenizer and its chat template kept in the folder (fit lays turns out with it; data.chat_template is then not
needed). `mmllm export --format hf|gguf [--merge-lora]` writes it.

The folder is written beside `--out` and renamed into place when complete (mmllm.formats.atomic_output);
`--overwrite` replaces an earlier one.

`--from-hf DIR` instead reads a whole Idefics3/SmolVLM checkpoint (mmllm.formats.hf_idefics3): its shapes, weights,
tokenizer, chat template and image preprocessing, so the folder answers as the checkpoint does in transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from mmllm.config import PRESETS, VLMConfig
from mmllm.errors import UsageError
from mmllm.formats.atomic_output import atomic_output, refuse_existing

if TYPE_CHECKING:
    import torch

LAYOUTS = ("mmllm", "smolvlm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", metavar="NAME", help=f"model preset: {', '.join(PRESETS)}")
    parser.add_argument("--tokenizer", type=Path, metavar="FILE",
                        help="tokenizer.json (the project's special tokens are added when missing)")
    parser.add_argument("--from-hf", type=Path, metavar="SMOLVLM_DIR",
                        help="a whole Idefics3/SmolVLM checkpoint folder (instead of --preset and --tokenizer)")
    parser.add_argument("--lm", type=Path, metavar="FILE.gguf|HF_DIR",
                        help="a pretrained Llama-family LM: a GGUF file, or a Hugging Face folder (config.json + "
                             "safetensors); without --preset, a text-only model")
    parser.add_argument("--vision", type=Path, metavar="HF_DIR",
                        help="Hugging Face SigLIP folder (config.json + safetensors)")
    parser.add_argument("--layout", choices=LAYOUTS, default="mmllm",
                        help="with --preset: mmllm (default: MLP projector, mmllm's chat tokens) or smolvlm (SmolVLM's "
                             "projector, image markup, tokens and chat template: exportable to transformers and "
                             "llama.cpp)")
    parser.add_argument("--out", required=True, type=Path, metavar="MODEL_DIR", help="model folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh initialisation (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier model folder in --out (it stays intact until the new one is complete)")


def run(args: argparse.Namespace) -> int:
    import torch

    from data_pipelines.chat.special_tokens import TokenIds
    from data_pipelines.chat.tokenizer import load_tokenizer, prepare_tokenizer, vocab_size
    from mmllm.formats import hf_llama as hf_import
    from mmllm.formats.model_folder import load_weights_strict, save_model_folder
    from mmllm.formats.pretrained import is_gguf, read_language_model
    from mmllm.model import VLM

    refuse_existing(args.out, args.overwrite)  # before reading the parts; atomic_output checks again
    if args.from_hf is not None:
        if args.preset or args.tokenizer or args.lm or args.vision:
            raise UsageError("--from-hf brings the whole model: leave out --preset, --tokenizer, --lm and --vision")
        return import_whole(args.from_hf, args.out, args.overwrite)
    if args.layout != "mmllm" and not args.preset:
        raise UsageError(f"--layout {args.layout} lays out a VLM: name a --preset")
    if args.lm is not None and not args.preset:
        if args.tokenizer or args.vision:
            raise UsageError("a text-only model (--lm without --preset) keeps its own tokenizer and has no vision: "
                             "leave out --tokenizer and --vision, or name a --preset for a VLM")
        return import_language_model(args.lm, args.out, args.overwrite)
    from_gguf = args.lm is not None and is_gguf(args.lm)
    if not args.preset or not (args.tokenizer or from_gguf):
        raise UsageError("--preset and --tokenizer are required (or --lm FILE.gguf|HF_DIR alone for a text-only "
                         "model, or --from-hf SMOLVLM_DIR)")
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.tokenizer:
        try:
            tokenizer, added = load_tokenizer(args.tokenizer)
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from error
    pretrained = read_language_model(args.lm) if from_gguf else None
    if not args.tokenizer:  # the GGUF file's own tokenizer, with the project's special tokens added
        tokenizer = pretrained.tokenizer
        added = prepare_tokenizer(tokenizer)
    if args.layout == "smolvlm":
        from data_pipelines.chat import smolvlm_format

        added += smolvlm_format.add_tokens(tokenizer)
        special = smolvlm_format.special_ids(tokenizer)
        image_id, pad_id, eos_ids = special.image, special.pad, special.eos_ids
    else:
        ids = TokenIds.from_tokenizer(tokenizer)
        image_id, pad_id, eos_ids = ids.image, ids.pad, ids.eos_ids

    # The pretrained parts replace the preset's shapes; the preset is built and checked as in training.
    parts: dict = {}
    lm_weights: dict[str, torch.Tensor] = {}
    vision_weights: dict[str, torch.Tensor] = {}
    if args.lm is not None:
        lm, lm_weights = (pretrained.config, pretrained.tensors) if from_gguf else hf_import.load_hf_lm(args.lm)
        parts["lm"] = dataclasses.asdict(lm)
        print(f"LM from {args.lm}: {lm.n_layers} layers, dim {lm.dim}, vocab {lm.vocab_size}")
    if args.vision is not None:
        vision, vision_weights = hf_import.load_hf_vision(args.vision)
        parts["vision"] = dataclasses.asdict(vision)
        normalization = hf_import.hf_image_normalization(args.vision)
        if normalization is not None:
            parts["image_mean"], parts["image_std"] = normalization
        print(f"vision from {args.vision}: {vision.image_size}px, patch {vision.patch_size}, "
              f"{vision.n_layers} layers, dim {vision.dim}")
    if args.layout == "smolvlm":
        parts.update(smolvlm_layout(args.preset, parts))
    try:
        config = VLMConfig.from_preset(args.preset, **parts)
    except ValueError as error:
        raise UsageError(f"the pretrained parts do not fit the preset: {error}") from error

    # The embedding needs a row for every tokenizer id; a pretrained LM may have more rows than that (padding).
    rows = max(vocab_size(tokenizer), config.lm.vocab_size if lm_weights else 0)
    config = config.with_tokenizer_ids(rows, image_id, pad_id, eos_ids)
    if added:
        shown = ", ".join(repr(token) for token in added[:8]) + (f" and {len(added) - 8} more" if len(added) > 8 else "")
        print(f"tokenizer: added {len(added)} tokens: {shown}")

    torch.manual_seed(args.seed)
    model = VLM(config)
    if lm_weights:
        lm_weights = hf_import.resize_vocab(lm_weights, rows)
        load_weights_strict(model.lm, strip_prefix(lm_weights, "lm."), str(args.lm))
    if vision_weights:
        load_weights_strict(model.vision, strip_prefix(vision_weights, "vision."), str(args.vision))

    with atomic_output(args.out, args.overwrite) as folder:
        save_model_folder(model, tokenizer, folder)
    counts = model.num_parameters()
    print("parameters: " + ", ".join(f"{name} {counts[name]:,}" for name in ("vision", "projector", "lm", "total")))
    print(f"image tokens per image: {config.tokens_per_image}; vocab {config.lm.vocab_size}")
    print(f"wrote {args.out} (train from it with --model.init_from {args.out})")
    return 0


def smolvlm_layout(preset: str, parts: dict) -> dict:
    """The VLMConfig fields of SmolVLM's layout on a preset (its vision tower, or the pretrained one in `parts`)."""
    from data_pipelines.chat.smolvlm_format import CHAT_TEMPLATE

    image_size = (parts.get("vision") or dataclasses.asdict(PRESETS[preset].vision))["image_size"]
    return {"projector": "linear", "image_positions": "none", "attention": "causal", "image_markup": "idefics3",
            "resize": "idefics3", "longest_edge": image_size, "image_splitting": False,
            "chat_template": CHAT_TEMPLATE}


def import_language_model(source: Path, out: Path, overwrite: bool) -> int:
    """`--lm` alone: a GGUF file or Hugging Face folder -> a text-only model folder with the same logits."""
    from mmllm.formats.model_folder import save_model_folder
    from mmllm.formats.pretrained import read_language_model, text_only_model

    pretrained = read_language_model(source)
    model = text_only_model(pretrained)
    with atomic_output(out, overwrite) as folder:
        save_model_folder(model, pretrained.tokenizer, folder)
    lm = pretrained.config
    template = "its own chat template" if pretrained.chat_template else "no chat template (generate and eval only)"
    print(f"language model from {source} ({pretrained.name}): {lm.n_layers} layers, dim {lm.dim}, "
          f"vocab {lm.vocab_size}, {model.num_parameters()['total']:,} parameters; {template}")
    print(f"wrote {out} (a text-only model: generate, chat, eval --task text, serve; "
          f"train from it with --model.init_from {out})")
    return 0


def import_whole(folder: Path, out: Path, overwrite: bool) -> int:
    """`--from-hf`: an Idefics3/SmolVLM folder -> a model folder with the same logits."""
    from mmllm.formats.hf_idefics3 import load_idefics3
    from mmllm.formats.model_folder import load_weights_strict, save_model_folder
    from mmllm.model import VLM

    config, tensors, tokenizer = load_idefics3(folder)
    model = VLM(config)
    dtype = next(t.dtype for t in tensors.values() if t.is_floating_point())
    model.to(dtype=dtype)  # the checkpoint's own dtype: a round trip is exact
    load_weights_strict(model, tensors, str(folder))
    with atomic_output(out, overwrite) as staging:
        save_model_folder(model, tokenizer, staging)
    counts = model.num_parameters()
    print(f"Idefics3 model from {folder}: {config.vision.image_size}px images -> {config.tokens_per_image} tokens, "
          f"LM {config.lm.n_layers} layers, dim {config.lm.dim}, vocab {config.lm.vocab_size}, weights {dtype}")
    print("parameters: " + ", ".join(f"{name} {counts[name]:,}" for name in ("vision", "projector", "lm", "total")))
    splitting = (f"images split into {config.vision.image_size}px tiles plus the whole image" if config.image_splitting
                 else "image splitting off")
    print(f"wrote {out} (its own chat template and image preprocessing; {splitting})")
    return 0


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Names relative to a submodule: 'lm.norm.weight' -> 'norm.weight'."""
    return {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}
