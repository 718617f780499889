"""data.augment through `mmllm fit`: the option round-trips through the run's config, training images are
augmented and validation images are not, and an augmented run resumes."""

from __future__ import annotations

import pytest
import yaml
from fit_helpers import column, fit_config, read_metrics, write_config

from mmllm.cli.main import main

pytest.importorskip("torchvision")
pytestmark = pytest.mark.slow

AUGMENT = {"crop_scale": 0.8, "flip": True, "color_jitter": 0.2}


def test_an_augmented_fit_records_its_option_and_resumes(shapes_data, tmp_path):
    config = fit_config(shapes_data, tmp_path, trainer={"max_steps": 2, "val_check_interval": 2})
    config["data"]["augment"] = AUGMENT
    path = write_config(config, tmp_path / "config.yaml")
    assert main(["fit", "--config", str(path)]) == 0
    saved = yaml.safe_load(next((tmp_path / "logs").glob("version_0/config.yaml")).read_text())
    assert saved["data"]["augment"] == AUGMENT  # the run's own record of what it did
    assert main(["fit", "--config", str(path), "--ckpt_path", "last", "--trainer.max_steps", "4"]) == 0
    assert max(step for step, _ in column(read_metrics(tmp_path), "train/loss")) == 3


def test_only_the_training_processor_augments(shapes_data):
    from types import SimpleNamespace

    from data_pipelines.augment import Augmentation
    from mmllm.config import VLMConfig
    from mmllm.train.datamodule import VLMDataModule

    data = fit_config(shapes_data, shapes_data)["data"]
    module = VLMDataModule(**{**data, "augment": Augmentation(flip=True)})
    module.trainer = SimpleNamespace(lightning_module=SimpleNamespace(config=VLMConfig()))
    module.setup("fit")
    assert module.train_processor.augment is not None and module.processor.augment is None
    assert VLMDataModule(**{**data, "augment": Augmentation()}).augment is None  # nothing asked: nothing done
