"""Export a training checkpoint or a model folder: as an mmllm model folder (config.json, model.safetensors,
tokenizer.json), as a transformers Idefics3 folder (`--format hf`, mmllm.formats.hf_idefics3) that
AutoModelForImageTextToText and AutoProcessor load without trust_remote_code, or as llama.cpp's GGUF files
(`--format gguf`, mmllm.formats.gguf: the language model and the mmproj, F16 and Q8_0, or `--gguf-types`).
A language model alone (a text-only model folder) exports as a LlamaForCausalLM folder (mmllm.formats.hf_llama)
and as one GGUF per type. A LoRA run's checkpoint exports as an adapter folder (mmllm.formats.lora_adapters: its
adapters, and the parts it trained in full, for `--lora DIR` on its base), as PEFT's adapter beside the base's
transformers folder (`--format hf --lora peft`: OUT/base and OUT/adapter), or merged (`--merge-lora`, any format). `--quantize int8|int4`
stores an mmllm folder's linear layers as int8 / int4 weights with scales (mmllm.compress.quantized_weights), which
`--model` loads quantised. Every output is written beside OUT (`OUT.partial-PID`) and renamed into place when
complete (mmllm.formats.atomic_output): an export that fails or is killed leaves OUT as it was; `--overwrite`
replaces an earlier export.

Examples: mmllm export runs/shapes-tiny/checkpoints/last.ckpt --out models/shapes-tiny
          mmllm export models/smolvlm-tuned --format hf --out hf/smolvlm-tuned
          mmllm export models/smolvlm-tuned --format gguf --out gguf/smolvlm-tuned
          mmllm export models/shapes-tiny --quantize int8 --out models/shapes-tiny-int8
          mmllm export runs/lora/checkpoints/last.ckpt --format hf --lora peft --out hf/smollm2-lora
          mmllm export runs/lora/checkpoints/last.ckpt --merge-lora --format gguf --out gguf/smollm2-tuned
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from mmllm.errors import UsageError
from mmllm.formats.atomic_output import atomic_output, refuse_existing


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
    parser.add_argument("--force", action="store_true",
                        help="--merge-lora or --lora peft: write the run's base folder even when its weights are no "
                             "longer those the run was trained on")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in OUT (it stays intact until the new one is complete)")


def run(args: argparse.Namespace) -> int:
    from mmllm.formats.gguf import ALL_TYPES

    kinds = tuple(dict.fromkeys(kind.strip() for kind in args.gguf_types.split(",") if kind.strip()))
    if not kinds or set(kinds) - set(ALL_TYPES):
        raise UsageError(f"--gguf-types takes a comma list of {', '.join(ALL_TYPES)}; got {args.gguf_types!r}")
    refuse_existing(Path(args.out), args.overwrite)  # before the slow loading; atomic_output checks again
    if args.quantize and args.format != "mmllm":
        raise UsageError(f"--quantize writes an mmllm folder; --format {args.format} has its own precisions")
    lora = lora_run(Path(args.checkpoint))
    if (args.lora or args.merge_lora) and lora is None:
        raise UsageError(f"--lora and --merge-lora export a LoRA run's checkpoint; {args.checkpoint} is not one")
    if args.lora and (args.merge_lora or args.format != "hf"):
        raise UsageError("--lora peft writes a transformers base and its adapter: use it with --format hf, "
                         "without --merge-lora")
    if lora is not None and (args.merge_lora or args.lora):  # the base goes into OUT: it must be the run's own
        from mmllm.formats.lora_adapters import check_base

        check_base(lora.get("base_identity"), lora["base"], f"checkpoint {args.checkpoint} (a LoRA run)", args.force)
    if lora is not None and not args.merge_lora:
        refuse_grown_vocabulary(Path(args.checkpoint), lora)
        if args.lora == "peft":
            return export_peft(Path(args.checkpoint), Path(args.out), lora, args.overwrite)
        if args.format != "mmllm" or args.quantize:
            raise UsageError(f"{args.checkpoint} holds LoRA adapters: export them merged (--merge-lora), or as "
                             "PEFT's adapter (--format hf --lora peft), or as an adapter folder (no --format)")
        return export_adapter(Path(args.checkpoint), Path(args.out), lora, args.overwrite)
    if args.format in ("hf", "gguf"):
        return export_elsewhere(Path(args.checkpoint), Path(args.out), args.format, kinds, args.overwrite)
    if args.quantize:
        return export_quantized(Path(args.checkpoint), Path(args.out), args.quantize, args.overwrite)
    if Path(args.checkpoint).is_dir():
        raise UsageError(f"{args.checkpoint} is a model folder already; export it with --format hf or --quantize")
    from mmllm.formats.checkpoint import export_checkpoint

    with atomic_output(args.out, args.overwrite) as folder:
        export_checkpoint(args.checkpoint, folder, force=True)  # a LoRA run's base was checked above
    print(f"exported {args.checkpoint} to {args.out}")
    return 0


def lora_run(source: Path) -> dict | None:
    """A LoRA run's record when `source` is its checkpoint, else None."""
    if source.is_dir() or source.suffix != ".ckpt":
        return None
    from mmllm.formats.checkpoint import lora_of_checkpoint

    return lora_of_checkpoint(source)


def refuse_grown_vocabulary(source: Path, lora: dict) -> None:
    """An adapter applies to its base as it is: a run that added tokens to the base's vocabulary (an MLM run's
    `<mask>`) exports merged only."""
    from mmllm.formats.checkpoint import read_checkpoint
    from mmllm.formats.model_folder import read_model_config

    rows = read_checkpoint(source, mmap=True)["mmllm_config"]["lm"]["vocab_size"]
    base_rows = read_model_config(lora["base"]).lm.vocab_size
    if rows > base_rows:
        raise UsageError(f"{source}: this LoRA run added {rows - base_rows} token(s) (e.g. <mask>) to its base's "
                         f"{base_rows}, which an adapter on {lora['base']} cannot carry; export it with --merge-lora")


def export_adapter(source: Path, out: Path, lora: dict, overwrite: bool) -> int:
    from mmllm.formats.checkpoint import model_from_checkpoint
    from mmllm.formats.lora_adapters import save_adapter
    from mmllm.model.lora import LoRAConfig

    model, _, _ = model_from_checkpoint(source, merge_lora=False, force=True)  # the adapters need no base weights
    state = model.state_dict()
    extra = {name: state[name] for name in lora["trained"] if ".lora_" not in name}
    with atomic_output(out, overwrite) as folder:
        save_adapter(model, LoRAConfig(**lora["config"]), folder, lora["base"], peft=False, extra=extra,
                     train_modules=lora["train_modules"], base_identity=lora.get("base_identity"))
    print(f"exported the adapters of {source} to {out} (on {lora['base']}: mmllm ask|chat|generate ... "
          f"--model {lora['base']} --lora {out})")
    return 0


def export_peft(source: Path, out: Path, lora: dict, overwrite: bool) -> int:
    from mmllm.formats.checkpoint import model_from_checkpoint
    from mmllm.formats.hf_llama import export_llama
    from mmllm.formats.lora_adapters import save_adapter
    from mmllm.formats.model_folder import load_model_folder
    from mmllm.model.lora import LoRAConfig, merged_state_dict

    model, tokenizer, config = model_from_checkpoint(source, merge_lora=False, force=True)  # run() checked the base
    if config.reads_images:
        raise UsageError("--lora peft writes a LlamaForCausalLM's adapter: a language model alone; export this "
                         "VLM with --merge-lora")
    base, base_tokenizer, base_config = load_model_folder(lora["base"])
    if lora["config"].get("base", "float") != "float":  # QLoRA: PEFT's adapter applies to the dequantised base
        base.float().load_state_dict(merged_state_dict(model, adapters=False))  # it trained on, as --lora does
    with atomic_output(out, overwrite) as folder:  # base and adapter replace OUT together
        export_llama(base.float(), base_tokenizer, base_config, folder / "base")
        save_adapter(model, LoRAConfig(**lora["config"]), folder / "adapter", str((out / "base").resolve()),
                     peft=True, extra={n: None for n in lora["trained"] if ".lora_" not in n},
                     train_modules=lora["train_modules"])
    print(f"exported {source} to {out}/base (transformers) and {out}/adapter (PEFT): "
          f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{out}/base'), '{out}/adapter')")
    return 0


def export_quantized(source: Path, out: Path, quantize: str, overwrite: bool) -> int:
    from mmllm.formats.checkpoint import model_from_checkpoint
    from mmllm.formats.model_folder import WEIGHTS_FILE, load_model_folder, save_model_folder
    from mmllm.compress.quantization import parse_bits

    load = load_model_folder if source.is_dir() else partial(model_from_checkpoint, force=True)  # run() checked
    model, tokenizer, _config = load(source)
    with atomic_output(out, overwrite) as folder:
        save_model_folder(model.float(), tokenizer, folder, quantize=parse_bits(quantize))
    size = (out / WEIGHTS_FILE).stat().st_size / 2**20
    print(f"exported {source} to {out} ({quantize} weights, {WEIGHTS_FILE} {size:.1f} MiB)")
    return 0


def export_elsewhere(source: Path, out: Path, format: str, kinds: tuple[str, ...], overwrite: bool) -> int:
    from mmllm.formats.checkpoint import model_from_checkpoint
    from mmllm.formats.model_folder import load_model_folder

    load = load_model_folder if source.is_dir() else partial(model_from_checkpoint, force=True)  # run() checked
    model, tokenizer, config = load(source)
    if format == "hf" and not config.reads_images:
        from mmllm.formats.hf_llama import export_llama

        with atomic_output(out, overwrite) as folder:
            export_llama(model, tokenizer, config, folder)
        print(f"exported {source} to {out} (transformers: AutoModelForCausalLM, AutoTokenizer)")
        return 0
    if format == "hf":
        from mmllm.formats.hf_idefics3 import export_idefics3

        with atomic_output(out, overwrite) as folder:
            export_idefics3(model, tokenizer, config, folder)
        print(f"exported {source} to {out} (transformers Idefics3: AutoModelForImageTextToText, AutoProcessor)")
        return 0
    try:
        import gguf  # noqa: F401  (llama.cpp's writer, an optional dependency)
    except ImportError:
        raise UsageError("--format gguf needs the gguf package: pip install 'mmllm[gguf]'") from None
    from mmllm.formats.gguf import export_gguf

    with atomic_output(out, overwrite) as folder:
        written = export_gguf(model, tokenizer, config, folder, name=source.stem, kinds=kinds)
    run = (f"llama-server -m {out / written[0].name}" if not config.reads_images
           else f"llama-server -m {out / written[0].name} --mmproj {out / written[1].name}")
    print(f"exported {source} to {out} (llama.cpp: {', '.join(path.name for path in written)}; run {run})")
    return 0
