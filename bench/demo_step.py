"""The shapes demo's own training step, lever by lever: what `python bench/train_step.py --demo` measures.

Each row builds the demo's model and optimiser from configs/shapes-tiny.yaml (Muon, the real shapes batches from
the data module, gradient clipping at 1.0) in a child process and times whole optimiser steps on the same 12
batches after 4 untimed ones (where torch.compile compiles). The levers:
- precision: `32-true` or `bf16-mixed` (CPU autocast);
- compile: `none` or `blocks` (model.compile);
- attention: `float32` (mmllm.model.sdpa: float32 attention under CPU autocast) or `torch` (torch's own bf16
  attention: the demo's step before this lever);
- muon: `batched` (matrices of one shape orthogonalised together) or `one_by_one` (the step before this lever).
`--nanovlm PATH` adds nanoVLM's modules (its ViT, modality projector and language model, from a checkout at
PATH) at the same shapes with AdamW, fp32 and bf16-mixed, on the same batches. `--fit` adds whole `mmllm fit`
runs of the demo config (before: 32-true, no compile; after: the shipped config), timed between steps 100 and
250 of the printed progress: the step with the data loader, Lightning and logging around it.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "shapes-tiny.yaml"

# (name, precision, compile, attention, muon): each lever added to the one before.
LEVERS = [
    ("before: fp32, eager", "32-true", "none", "float32", "one_by_one"),
    ("+ Muon batched by shape", "32-true", "none", "float32", "batched"),
    ("+ compiled blocks (fp32)", "32-true", "blocks", "float32", "batched"),
    ("bf16-mixed, torch's bf16 attention", "bf16-mixed", "none", "torch", "batched"),
    ("bf16-mixed, float32 attention", "bf16-mixed", "none", "float32", "batched"),
    ("after: bf16-mixed, float32 attention, compiled blocks", "bf16-mixed", "blocks", "float32", "batched"),
]


def data_overrides(data: Path) -> list[str]:
    sources = (f"[{{kind: caption, path: {data}/train/captions, weight: 1.0}}, "
               f"{{kind: chat, path: {data}/train/chat, weight: 4.0}}]")
    return ["--data.tokenizer", f"{data}/tokenizer.json", "--data.sources", sources,
            "--data.val_sources", f"[{{kind: chat, path: {data}/val/chat}}]"]


def ensure_data(data: Path) -> Path:
    """The shapes data and tokenizer at `data`, made with the demo's own commands when missing."""
    if not (data / "tokenizer.json").is_file():
        mmllm = [sys.executable, "-m", "mmllm.cli.main"]
        subprocess.run([*mmllm, "data", "shapes", "--out", str(data), "--overwrite"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*mmllm, "tokenizer", "train", "--data", f"{data}/train", "--vocab-size", "512",
                        "--out", f"{data}/tokenizer.json"], check=True, stdout=subprocess.DEVNULL)
    return data


def demo_module(data: Path, precision: str, compile_: str):
    """(the demo's VLMModule, a list of 16 training batches) from the shipped config, as `mmllm fit` builds them."""
    from mmllm.train.cli import MMLLMCLI
    from mmllm.train.datamodule import VLMDataModule
    from mmllm.train.module import VLMModule
    from mmllm.train.precision import Trainer

    args = ["--config", str(CONFIG), *data_overrides(data), "--model.compile", compile_,
            "--trainer.precision", precision, "--trainer.logger", "false", "--trainer.default_root_dir",
            tempfile.mkdtemp()]
    cli = MMLLMCLI(VLMModule, VLMDataModule, trainer_class=Trainer, run=False, args=args, save_config_callback=None)
    module, datamodule = cli.model, cli.datamodule
    cli.trainer.strategy.connect(module)  # what fit does first: the data module reads the model's config
    module.trainer = datamodule.trainer = cli.trainer
    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(module.on_before_batch_transfer(batch, 0))
        if len(batches) == 16:
            break
    return module, batches


def one_by_one(updates, coefficients, steps, eps, dtype):
    """Muon's orthogonalisation one matrix at a time (the step before batching)."""
    from mmllm.train.muon import orthogonalise

    return [orthogonalise(u, coefficients, steps, eps, dtype) for u in updates]


def torch_attention(q, k, v, **options):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, **options)


def time_steps(step, batches, warmup: int = 4) -> dict:
    for batch in batches[:warmup]:
        step(batch)
    times = []
    for batch in batches[warmup:]:
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"median_s": times[len(times) // 2], "best_s": times[0], "steps": len(times)}


def run_lever(data: Path, name: str, precision: str, compile_: str, attention: str, muon: str) -> dict:
    """One LEVERS row, in this process."""
    import mmllm.model.lm as lm
    import mmllm.model.vision as vision
    import mmllm.train.muon as muon_module
    from mmllm.train.module import forward_inputs

    if attention == "torch":
        lm.scaled_dot_product_attention = vision.scaled_dot_product_attention = torch_attention
    if muon == "one_by_one":
        muon_module.orthogonalise_all = one_by_one
    torch.manual_seed(0)
    module, batches = demo_module(data, precision, compile_)
    model = module.model.train()
    optimizer = module.make_optimizer()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(**forward_inputs(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    timing = time_steps(step, batches)
    B, T = batches[0]["input_ids"].shape
    return {"name": name, "precision": precision, "compile": compile_, "attention": attention, "muon": muon,
            "batch_size": B, "first_batch_tokens": T, **timing, "steps_per_s": 1 / timing["median_s"]}


def run_nanovlm(data: Path, path: Path, precision: str) -> dict:
    """nanoVLM's ViT, modality projector and language model at the demo's shapes, AdamW, the same batches."""
    sys.path.insert(0, str(path))
    from models.config import VLMConfig as NanoConfig
    from models.language_model import LanguageModel
    from models.modality_projector import ModalityProjector
    from models.vision_transformer import ViT

    torch.manual_seed(0)
    module, batches = demo_module(data, "32-true", "none")
    ours = module.config
    cfg = NanoConfig(
        vit_hidden_dim=ours.vision.dim, vit_inter_dim=ours.vision.mlp_dim, vit_patch_size=ours.vision.patch_size,
        vit_img_size=ours.vision.image_size, vit_n_heads=ours.vision.n_heads, vit_n_blocks=ours.vision.n_layers,
        lm_hidden_dim=ours.lm.dim, lm_inter_dim=ours.lm.mlp_dim, lm_n_heads=ours.lm.n_heads,
        lm_n_kv_heads=ours.lm.n_kv_heads, lm_n_blocks=ours.lm.n_layers, lm_vocab_size=ours.lm.vocab_size,
        lm_base_vocab_size=ours.lm.vocab_size, mp_pixel_shuffle_factor=ours.pixel_shuffle,
        mp_image_token_length=ours.tokens_per_image, lm_max_position_embeddings=512)
    vit, projector, lm = ViT(cfg), ModalityProjector(cfg), LanguageModel(cfg)
    parts = torch.nn.ModuleList([vit, projector, lm]).train()
    optimizer = torch.optim.AdamW(parts.parameters(), lr=1e-3)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
    tpi = ours.tokens_per_image

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            images = projector(vit(batch["pixel_values"]))  # (B, tokens per image, lm dim)
            text = lm.token_embedding(batch["input_ids"][:, tpi:])
            hidden, _ = lm(torch.cat([images, text], dim=1))
            logits = lm.head(hidden)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                     batch["labels"][:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parts.parameters(), 1.0)
        optimizer.step()

    timing = time_steps(step, batches)
    return {"name": f"nanoVLM modules, {precision}, eager, AdamW", "precision": precision, "compile": "none",
            "nanovlm": str(path), **timing, "steps_per_s": 1 / timing["median_s"]}


def fit_rate(data: Path, name: str, overrides: list[str], first: int = 100, last: int = 250) -> dict:
    """A whole `mmllm fit` of the demo config: seconds per step between steps `first` and `last`."""
    work = Path(tempfile.mkdtemp())
    command = [sys.executable, "-m", "mmllm.cli.main", "fit", "--config", str(CONFIG), *data_overrides(data),
               "--trainer.max_steps", str(last), "--trainer.max_time", "null", "--model.schedule_by_time", "false",
               "--trainer.val_check_interval", "1000", "--trainer.default_root_dir", str(work),
               "--export.out", str(work / "model"), *overrides]
    seen: dict[int, float] = {}
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as fit:
        for line in fit.stdout:
            match = re.match(r"step (\d+)/", line)
            if match:
                seen[int(match.group(1))] = time.perf_counter()
    if fit.returncode != 0 or first not in seen or last not in seen:
        return {"name": name, "error": f"mmllm fit exited {fit.returncode} (steps seen: {sorted(seen)[-3:]})"}
    per_step = (seen[last] - seen[first]) / (last - first)
    return {"name": name, "overrides": overrides, "s_per_step": per_step, "steps_per_s": 1 / per_step,
            "first_step_at_s": min(seen.values()) - start, "between_steps": [first, last]}


def child(args: list[str]) -> dict:
    """Run this file's `--one` mode in a fresh process; its JSON, or {"error": ...}."""
    done = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {"args": args, "error": lines[-1] if lines else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def demo_rows(data: Path, nanovlm: Path | None, fit: bool) -> list[dict]:
    rows = []
    for lever in LEVERS:
        rows.append(child([str(data), "lever", *lever]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if nanovlm is not None:
        for precision in ("32-true", "bf16-mixed"):
            rows.append(child([str(data), "nanovlm", str(nanovlm), precision]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if fit:
        for name, overrides in (("mmllm fit, before: 32-true, no compile",
                                 ["--trainer.precision", "32-true", "--model.compile", "none"]),
                                ("mmllm fit, the shipped config", [])):
            rows.append(fit_rate(data, name, overrides))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = next((r["steps_per_s"] for r in rows if r.get("name") == LEVERS[0][0] and "steps_per_s" in r), None)
    fit_base = next((r["steps_per_s"] for r in rows if r.get("name", "").startswith("mmllm fit, before")
                     and "steps_per_s" in r), None)
    for row in rows:
        reference = fit_base if row.get("name", "").startswith("mmllm fit") else base
        if reference and "steps_per_s" in row:
            row["speedup_vs_before"] = row["steps_per_s"] / reference
    return rows


if __name__ == "__main__" and sys.argv[1:2] == ["--one"]:
    sys.path.insert(0, str(ROOT))
    data, kind, *rest = sys.argv[2:]
    if kind == "lever":
        print(json.dumps(run_lever(Path(data), *rest)))
    else:
        print(json.dumps(run_nanovlm(Path(data), Path(rest[0]), rest[1])))
