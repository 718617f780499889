"""Export a training checkpoint or a model folder: as an mmllm model folder (config.json, model.safetensors,
tokenizer.json), as a transformers Idefics3 folder (`--format hf`, mmllm.formats.hf_idefics3) that
AutoModelForImageTextToText and AutoProcessor load without trust_remote_code, or as llama.cpp's GGUF files
(`--format gguf`, mmllm.formats.gguf: the language model and the mmproj, F16 and Q8_0, or `--gguf-types`).
A language model alone (a text-only model folder) exports as a LlamaForCausalLM folder (mmllm.formats.hf_llama)
and as one GGUF per type. A LoRA run's checkpoint exports as an adapter folder (mmllm.formats.lora_adapters: its
adapters, and the parts it trained in full, for `--lora DIR` on its base), as PEFT's adapter beside the base's
transformers folder (`--format hf --lora peft`: OUT/base and OUT/adapter), or merged (`--merge-lora`, any format). `--quantize int8|int4`
stores an mmllm folder's linear layers as int8 / int4 weights with scales (mmllm.compress.quantized_weights), which
`--model` loads quantised.

Examples: mmllm export runs/shapes-tiny/checkpoints/last.ckpt --out models/shapes-tiny
          mmllm export models/smolvlm-tuned --format hf --out hf/smolvlm-tuned
          mmllm export models/smolvlm-tuned --format gguf --out gguf/smolvlm-tuned
          mmllm export models/shapes-tiny --quantize int8 --out models/shapes-tiny-int8
          mmllm export runs/lora/checkpoints/last.ckpt --format hf --lora peft --out hf/smollm2-lora
          mmllm export runs/lora/checkpoints/last.ckpt --merge-lora --format gguf --out gguf/smollm2-tuned
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT|MODEL_DIR",
                        help="a Lightning checkpoint written by mmllm fit (.ckpt), or a model folder (--format hf|gguf)")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--format", choices=("mmllm", "hf", "gguf"), default="mmllm",
                        help="mmllm: a model folder (default); hf: a transformers Idefics3 folder; gguf: llama.cpp's "
                             "model-{f16,q8_0}.gguf and mmproj-{f16,q8_0}.gguf")
    parser.add_argument("--gguf-types", default="f16,q8_0", metavar="TYPES",
                        help="--format gguf: the files to write, a comma list of f32, f16, q8_0 (default f16,q8_0)")
    parser.add_argument("--quantize", choices=("int8", "int4"), default=None,
                        help="store the linear layers' weights as int8 or int4 (an mmllm folder: ~1/4 or ~1/7 of "
                             "float32's size); commands load it quantised")
    parser.add_argument("--lora", choices=("peft",), default=None,
                        help="a LoRA checkpoint with --format hf: the base as a transformers folder (OUT/base) and "
                             "the adapter in PEFT's layout (OUT/adapter)")
    parser.add_argument("--merge-lora", action="store_true",
                        help="a LoRA checkpoint: write the model with its adapters merged into the weights")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model in OUT (it stays intact if the export fails half-way)")


def run(args: argparse.Namespace) -> int:
    from mmllm.formats.gguf import ALL_TYPES, gguf_file_names
    from mmllm.formats.model_folder import MODEL_FOLDER_FILES

    kinds = tuple(dict.fromkeys(kind.strip() for kind in args.gguf_types.split(",") if kind.strip()))
    if not kinds or set(kinds) - set(ALL_TYPES):
        raise UsageError(f"--gguf-types takes a comma list of {', '.join(ALL_TYPES)}; got {args.gguf_types!r}")
    files = [name for kind in kinds for name in gguf_file_names(kind)] if args.format == "gguf" else MODEL_FOLDER_FILES
    taken = [name for name in files if (Path(args.out) / name).exists()]
    if taken and not args.overwrite:
        raise UsageError(f"{args.out} already holds a model ({', '.join(taken)}); pass --overwrite to replace it")
    if args.quantize and args.format != "mmllm":
        raise UsageError(f"--quantize writes an mmllm folder; --format {args.format} has its own precisions")
    lora = lora_run(Path(args.checkpoint))
    if (args.lora or args.merge_lora) and lora is None:
        raise UsageError(f"--lora and --merge-lora export a LoRA run's checkpoint; {args.checkpoint} is not one")
    if args.lora and (args.merge_lora or args.format != "hf"):
        raise UsageError("--lora peft writes a transformers base and its adapter: use it with --format hf, "
                         "without --merge-lora")
    if lora is not None and not args.merge_lora:
        if args.lora == "peft":
            return export_peft(Path(args.checkpoint), Path(args.out), lora)
        if args.format != "mmllm" or args.quantize:
            raise UsageError(f"{args.checkpoint} holds LoRA adapters: export them merged (--merge-lora), or as "
                             "PEFT's adapter (--format hf --lora peft), or as an adapter folder (no --format)")
        return export_adapter(Path(args.checkpoint), Path(args.out), lora)
    if args.format in ("hf", "gguf"):
        return export_elsewhere(Path(args.checkpoint), Path(args.out), args.format, kinds)
    if args.quantize:
        return export_quantized(Path(args.checkpoint), Path(args.out), args.quantize)
    if Path(args.checkpoint).is_dir():
        raise UsageError(f"{args.checkpoint} is a model folder already; export it with --format hf or --quantize")
    from mmllm.formats.checkpoint import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} to {out}")
    return 0


def lora_run(source: Path) -> dict | None:
    """A LoRA run's record when `source` is its checkpoint, else None."""
    if source.is_dir() or source.suffix != ".ckpt":
        return None
    from mmllm.formats.checkpoint import lora_of_checkpoint

    return lora_of_checkpoint(source)


def export_adapter(source: Path, out: Path, lora: dict) -> int:
    from mmllm.formats.checkpoint import model_from_checkpoint
    from mmllm.formats.lora_adapters import save_adapter
    from mmllm.model.lora import LoRAConfig

    model, _, _ = model_from_checkpoint(source, merge_lora=False)
    state = model.state_dict()
    extra = {name: state[name] for name in lora["trained"] if ".lora_" not in name}
    save_adapter(model, LoRAConfig(**lora["config"]), out, lora["base"], peft=False, extra=extra,
                 train_modules=lora["train_modules"])
    print(f"exported the adapters of {source} to {out} (on {lora['base']}: mmllm ask|chat|generate ... "
          f"--model {lora['base']} --lora {out})")
    return 0


def export_peft(source: Path, out: Path, lora: dict) -> int:
    from mmllm.formats.checkpoint import model_from_checkpoint
    from mmllm.formats.hf_llama import export_llama
    from mmllm.formats.lora_adapters import save_adapter
    from mmllm.formats.model_folder import load_model_folder
    from mmllm.model.lora import LoRAConfig

    model, tokenizer, config = model_from_checkpoint(source, merge_lora=False)
    if config.reads_images:
        raise UsageError("--lora peft writes a LlamaForCausalLM's adapter: a language model alone; export this "
                         "VLM with --merge-lora")
    base, base_tokenizer, base_config = load_model_folder(lora["base"])
    export_llama(base.float(), base_tokenizer, base_config, out / "base")
    save_adapter(model, LoRAConfig(**lora["config"]), out / "adapter", str((out / "base").resolve()), peft=True,
                 extra={n: None for n in lora["trained"] if ".lora_" not in n}, train_modules=lora["train_modules"])
    print(f"exported {source} to {out}/base (transformers) and {out}/adapter (PEFT): "
          f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{out}/base'), '{out}/adapter')")
    return 0


def export_quantized(source: Path, out: Path, quantize: str) -> int:
    from mmllm.formats.checkpoint import model_from_checkpoint
    from mmllm.formats.model_folder import WEIGHTS_FILE, load_model_folder, save_model_folder
    from mmllm.compress.quantization import parse_bits

    load = load_model_folder if source.is_dir() else model_from_checkpoint
    model, tokenizer, _config = load(source)
    save_model_folder(model.float(), tokenizer, out, quantize=parse_bits(quantize))
    size = (out / WEIGHTS_FILE).stat().st_size / 2**20
    print(f"exported {source} to {out} ({quantize} weights, {WEIGHTS_FILE} {size:.1f} MiB)")
    return 0


def export_elsewhere(source: Path, out: Path, format: str, kinds: tuple[str, ...]) -> int:
    from mmllm.formats.checkpoint import model_from_checkpoint
    from mmllm.formats.model_folder import load_model_folder

    load = load_model_folder if source.is_dir() else model_from_checkpoint
    model, tokenizer, config = load(source)
    if format == "hf" and not config.reads_images:
        from mmllm.formats.hf_llama import export_llama

        export_llama(model, tokenizer, config, out)
        print(f"exported {source} to {out} (transformers: AutoModelForCausalLM, AutoTokenizer)")
        return 0
    if format == "hf":
        from mmllm.formats.hf_idefics3 import export_idefics3

        export_idefics3(model, tokenizer, config, out)
        print(f"exported {source} to {out} (transformers Idefics3: AutoModelForImageTextToText, AutoProcessor)")
        return 0
    try:
        import gguf  # noqa: F401  (llama.cpp's writer, an optional dependency)
    except ImportError:
        raise UsageError("--format gguf needs the gguf package: pip install 'mmllm[gguf]'") from None
    from mmllm.formats.gguf import export_gguf

    written = export_gguf(model, tokenizer, config, out, name=source.stem, kinds=kinds)
    run = (f"llama-server -m {out / written[0].name}" if not config.reads_images
           else f"llama-server -m {out / written[0].name} --mmproj {out / written[1].name}")
    print(f"exported {source} to {out} (llama.cpp: {', '.join(path.name for path in written)}; run {run})")
    return 0
