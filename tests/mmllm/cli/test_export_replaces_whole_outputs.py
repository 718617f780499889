"""`mmllm export` and `mmllm build` write beside OUT and rename into place: an export killed half-way leaves the
previous output readable, and every output (model, adapter and PEFT folders alike) needs `--overwrite` to be
replaced, which replaces the whole folder."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from commands import SUBPROCESS_ENV
from tiny_models import tiny_text_model

import mmllm
from mmllm.cli.main import main
from mmllm.formats.model_folder import save_model_folder
from mmllm.model.lora import LoRAConfig, add_lora


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory) -> Path:
    """A LoRA run's checkpoint as `mmllm fit` writes one (the adapters, and the base folder it names)."""
    root = tmp_path_factory.mktemp("lora-export")
    model, tokenizer = tiny_text_model(dim=64)
    save_model_folder(model, tokenizer, root / "base")
    config = LoRAConfig(rank=2, alpha=4, targets=["q_proj", "v_proj"])
    add_lora(model, config)
    trained = [name for name, _ in model.named_parameters() if ".lora_" in name]
    state = model.state_dict()
    torch.save({"mmllm_config": model.config.to_dict(), "mmllm_tokenizer": tokenizer.to_str(),
                "state_dict": {f"model.{name}": state[name] for name in trained},
                "mmllm_lora": {"config": config.to_dict(), "base": str(root / "base"), "train_modules": [],
                               "trained": trained}}, root / "last.ckpt")
    return root / "last.ckpt"


@pytest.mark.parametrize("layout", ["adapter", "peft"])
def test_adapter_and_peft_exports_need_overwrite_and_then_replace_the_whole_folder(lora_checkpoint, tmp_path,
                                                                                   capsys, layout):
    out = tmp_path / layout
    args = ["export", str(lora_checkpoint), "--out", str(out)] + (["--format", "hf", "--lora", "peft"]
                                                                  if layout == "peft" else [])
    assert main(args) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a model" in err and "--overwrite" in err
    assert snapshot(out) == before
    (out / "leftover.txt").write_text("from an earlier export")
    assert main(args + ["--overwrite"]) == 0
    assert snapshot(out) == before  # same weights again, and nothing of the old folder left
    assert sorted(path.name for path in tmp_path.iterdir()) == [layout]


def test_overwrite_never_replaces_a_folder_that_is_not_an_export(lora_checkpoint, tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()  # a run's folder, say
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    assert main(["export", str(lora_checkpoint), "--out", str(tmp_path), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other things than an exported model" in err
    assert snapshot(tmp_path) == {"checkpoints/last.ckpt": b"weights"}


def test_build_needs_overwrite_to_replace_a_model_folder(lora_checkpoint, tmp_path, capsys):
    out = tmp_path / "model"
    args = ["build", "--lm", str(tmp_path / "hf"), "--out", str(out)]
    assert main(["export", str(lora_checkpoint.parent / "base"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0


# A `mmllm export` whose safetensors writer stops half-way through the weights, for the test below to kill.
STALLED_EXPORT = """
import os, sys, time
import safetensors.torch

write = safetensors.torch.save_file

def write_half_then_stall(tensors, filename, metadata=None):
    write(tensors, filename, metadata=metadata)
    os.truncate(filename, os.path.getsize(filename) // 2)
    open(os.environ["STALLED_MARK"], "w").close()
    time.sleep(120)

safetensors.torch.save_file = write_half_then_stall
from mmllm.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_killing_an_export_half_way_leaves_the_previous_output_readable(lora_checkpoint, tmp_path):
    out = tmp_path / "adapter"
    assert main(["export", str(lora_checkpoint), "--out", str(out)]) == 0
    before = snapshot(out)
    mark = tmp_path / "stalled"
    process = subprocess.Popen([sys.executable, "-c", STALLED_EXPORT, "export", str(lora_checkpoint), "--out",
                                str(out), "--overwrite"], env={**SUBPROCESS_ENV, "STALLED_MARK": str(mark)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not mark.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mark.exists(), process.communicate()[0] if process.poll() is not None else "no write in 120 s"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert snapshot(out) == before
    mmllm.load(lora_checkpoint.parent / "base", lora=out)  # reads and applies
    assert [path.name for path in tmp_path.glob("adapter.partial-*")] == [f"adapter.partial-{process.pid}"]
    # The next export cleans up what the killed one left beside OUT.
    assert main(["export", str(lora_checkpoint), "--out", str(out), "--overwrite"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter", "stalled"]
