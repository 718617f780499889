"""Helpers of the training tests: a micro-model fit config, running `mmllm` in a subprocess, reading metrics.csv.

The model is the tiny preset shrunk through `model.lm` and `model.vision`, so a step takes a fraction of a
second on a loaded CPU.
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import yaml
from commands import SUBPROCESS_ENV, mmllm_command, run_mmllm, start_mmllm  # noqa: F401 (the tests' one spelling)

# A model of ~120k parameters: 2-layer LM of width 64, 1-layer ViT of width 32, 4 tokens per 32 px image.
MICRO_LM = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "mlp_dim": 128, "max_seq_len": 256}
MICRO_VISION = {"dim": 32, "n_layers": 1, "n_heads": 2, "mlp_dim": 64}


def fit_config(shapes: Path, run_dir: Path, **sections) -> dict:
    """A complete `mmllm fit` config for the micro model on the shapes shards; `sections` update its sections."""
    config = {
        "seed_everything": 0,
        "model": {"preset": "tiny", "lm": dict(MICRO_LM), "vision": dict(MICRO_VISION), "lr": 3e-3,
                  "warmup_steps": 2},
        "data": {
            "tokenizer": str(shapes / "tokenizer.json"),
            "image_size": 32,
            "sources": [{"kind": "caption", "path": str(shapes / "train" / "captions"), "weight": 1.0},
                        {"kind": "chat", "path": str(shapes / "train" / "chat"), "weight": 1.0}],
            "val_sources": [{"kind": "chat", "path": str(shapes / "val" / "chat")}],
            "batch_size": 8,
            "num_workers": 0,
            "shuffle_buffer": 32,
            "val_vqa_questions": 4,
        },
        "trainer": {
            "max_steps": 12,
            "log_every_n_steps": 1,
            "val_check_interval": 6,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
            "enable_progress_bar": False,
            "default_root_dir": str(run_dir),
            "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": str(run_dir), "name": "logs"}}],
        },
        "checkpoint": {"dirpath": str(run_dir / "checkpoints")},
        "export": {"out": str(run_dir / "model")},
    }
    for section, values in sections.items():
        config[section] = {**config[section], **values} if isinstance(values, dict) else values
    return config


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """Rows of the CSVLogger's metrics.csv of the run's (only or latest) version."""
    files = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    assert files, f"no metrics.csv under {run_dir / 'logs'}"
    with open(files[-1], newline="") as handle:
        return list(csv.DictReader(handle))


def column(rows: list[dict[str, str]], name: str) -> list[tuple[int, float]]:
    """(step, value) of every row where the metric `name` was logged."""
    return [(int(row["step"]), float(row[name])) for row in rows if row.get(name)]


def finish(process: subprocess.Popen, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Wait for a `start_mmllm` process (killed after timeout); its exit status and output."""
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, (cwd / "stdout.txt").read_text(),
                                       (cwd / "stderr.txt").read_text())


def ddp_config(shapes: Path, run_dir: Path) -> dict:
    """Two CPU processes with gloo; the train shards hold 24, 24 and 16 samples, so the ranks' shares differ."""
    return fit_config(
        shapes, run_dir,
        trainer={"max_steps": 4, "val_check_interval": 2, "accelerator": "cpu", "devices": 2,
                 "strategy": {"class_path": "lightning.pytorch.strategies.DDPStrategy",
                              "init_args": {"process_group_backend": "gloo"}}},
        data={"num_workers": 1},
    )


def fsdp_config(shapes: Path, run_dir: Path) -> dict:
    """ddp_config under mmllm's FSDP strategy (each block a shard unit), a checkpoint every 2 steps to resume from."""
    config = ddp_config(shapes, run_dir)
    config["trainer"]["strategy"] = {"class_path": "mmllm.train.fsdp.BlockFSDP",
                                     "init_args": {"process_group_backend": "gloo"}}
    config["checkpoint"] = {**config["checkpoint"], "every_n_train_steps": 2, "save_top_k": -1, "monitor": None,
                            "filename": "step{step:02d}", "auto_insert_metric_name": False}
    return config
