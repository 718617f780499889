"""Fixtures for the inference tests: a tiny model trained for a few steps by `mmllm fit`, once per test run.

The run happens in a temporary folder: a small shapes dataset, a tokenizer trained on it, then
`mmllm fit --config configs/shapes-tiny.yaml` for 3 steps (in this process), which exports a model folder and leaves a
Lightning checkpoint of the same weights.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from inference_helpers import REPO, TrainedRun


def _extract_pngs(shard: Path, out: Path, count: int) -> None:
    out.mkdir(parents=True)
    with tarfile.open(shard) as tar:
        for member in [m for m in tar.getmembers() if m.name.endswith(".png")][:count]:
            (out / member.name).write_bytes(tar.extractfile(member).read())


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> TrainedRun:
    from data_pipelines.convert.shapes import generate_shapes
    from data_pipelines.read.shards import find_shards, shard_texts
    from data_pipelines.chat.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    generate_shapes(data, train=64, val=16, test=16, report=lambda *_: None)
    train_tokenizer(shard_texts(find_shards([data / "train"])), vocab_size=400).save(str(data / "tokenizer.json"))
    args = (
        "fit", "--config", REPO / "configs" / "shapes-tiny.yaml",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
        "--model.compile", "none",  # the config's compiled blocks pay over thousands of steps, not three
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.tokenizer", data / "tokenizer.json", "--data.batch_size", "8", "--data.num_workers", "0",
        "--data.val_vqa_questions", "4",
        "--data.sources", f"[{{kind: caption, path: {data}/train/captions, weight: 1.0}}, "
                          f"{{kind: chat, path: {data}/train/chat, weight: 2.0}}]",
        "--data.val_sources", f"[{{kind: chat, path: {data}/val/chat}}]",
        "--checkpoint.dirpath", root / "checkpoints", "--export.out", root / "model",
        "--trainer.default_root_dir", root,  # the logs land in the temporary folder
    )
    from mmllm.cli.main import main

    assert main([str(arg) for arg in args]) == 0, "mmllm fit failed"  # in this process: no second torch import
    images = root / "images"
    _extract_pngs(data / "val" / "captions" / "00000.tar", images, count=5)
    return TrainedRun(root, root / "model", root / "checkpoints" / "last.ckpt", data, images)


@pytest.fixture(scope="session")
def vlm(trained):
    """The trained model loaded in this process, on the CPU in float32."""
    from mmllm.inference import load

    return load(trained.model, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def sharp(trained, tmp_path_factory, vlm):
    """A model folder of the trained model's shape with sharp random weights: long answers that differ from
    prompt to prompt, so a mix-up between batched requests would show (the 3-step model mostly says nothing)."""
    import torch
    from tiny_models import sharpen_

    from mmllm.inference import load
    from mmllm.model import VLM
    from mmllm.formats.model_folder import save_model_folder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sharp") / "model"
    save_model_folder(sharpen_(VLM(vlm.config)), vlm.tokenizer, folder)
    return folder, load(folder, device="cpu", dtype="float32")
