"""Bad samples in the training data are skipped, counted, logged as train/skipped_samples and kept in checkpoints."""

from __future__ import annotations

import io

import lightning as L
import torch
from fit_helpers import MICRO_LM, MICRO_VISION, column, read_metrics
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from data_pipelines.convert.writers import ShardWriter
from mmllm.train.datamodule import VLMDataModule
from mmllm.train.module import VLMModule


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_corrupt_images_are_skipped_counted_logged_and_checkpointed(shapes_data, tmp_path):
    with ShardWriter(tmp_path / "captions", maxcount=100, report=lambda *_: None) as writer:
        for index in range(8):  # every other image is not an image at all
            image = png((200, 30 * index, 40)) if index % 2 == 0 else b"not a png"
            writer.write({"png": image, "txt": f"a red square number {index}."}, key=f"{index:05d}")
    data = VLMDataModule(str(shapes_data / "tokenizer.json"), image_size=32, batch_size=4, num_workers=0,
                         shuffle_buffer=1, sources=[{"kind": "caption", "path": str(tmp_path / "captions")}])
    module = VLMModule(lm=dict(MICRO_LM), vision=dict(MICRO_VISION), warmup_steps=1, model_inputs=data.model_inputs)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=CSVLogger(tmp_path, name="logs"), log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)

    # 4 good samples make 1 batch: each of the 2 steps is a pass meeting the 4 bad ones, each counted once
    assert data.bad_samples.counts == {"corrupt image": 4}
    assert not data.val_bad_samples.total
    trainer.logger.save()
    logged = column(read_metrics(tmp_path), "train/skipped_samples")
    assert [step for step, _ in logged] == [0, 1] and logged[-1][1] == data.bad_samples.total

    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)["VLMDataModule"]
    restored = VLMDataModule(str(shapes_data / "tokenizer.json"), sources=[])
    restored.load_state_dict(saved)
    assert restored.bad_samples.counts == data.bad_samples.counts
