"""Freezing: an align-stage run (vision and LM frozen) from a model folder changes only the projector."""

from __future__ import annotations

import pytest
import torch
from fit_helpers import MICRO_LM, MICRO_VISION, fit_config, write_config

from mmllm.cli.main import main
from mmllm.formats.model_folder import load_model_folder, save_model_folder
from mmllm.train.datamodule import VLMDataModule
from mmllm.train.module import VLMModule

pytestmark = pytest.mark.slow


@pytest.fixture
def init_folder(shapes_data, tmp_path):
    """A model folder as `mmllm build` makes one: fresh weights, the data's tokenizer."""
    data = VLMDataModule(str(shapes_data / "tokenizer.json"), sources=[], image_size=32)
    module = VLMModule(preset="tiny", lm=dict(MICRO_LM), vision=dict(MICRO_VISION), model_inputs=data.model_inputs)
    save_model_folder(module.model, module.tokenizer, tmp_path / "init")
    return tmp_path / "init"


def test_align_stage_changes_only_the_projector(shapes_data, init_folder, tmp_path):
    config = fit_config(shapes_data, tmp_path / "run", trainer={"max_steps": 3, "limit_val_batches": 0},
                        checkpoint={"monitor": None})
    config["model"] = {"init_from": str(init_folder), "freeze": ["vision", "lm"], "lr": 1e-2, "warmup_steps": 1}
    assert main(["fit", "--config", str(write_config(config, tmp_path / "align.yaml"))]) == 0

    before = load_model_folder(init_folder)[0].state_dict()
    after = load_model_folder(tmp_path / "run" / "model")[0].state_dict()
    changed = sorted(name for name in before if not torch.equal(before[name], after[name]))
    projector = sorted(name for name in before if name.startswith("projector."))
    assert changed == projector and projector  # every projector weight moved, nothing else did


def test_init_from_takes_a_data_tokenizer_only_when_it_is_the_models(shapes_data, init_folder):
    """Fewer tokens than the embedding's rows is fine (spare pretrained rows); more, or other ids, is refused."""
    inputs = VLMDataModule(str(shapes_data / "tokenizer.json"), sources=[], image_size=32).model_inputs
    rows = load_model_folder(init_folder)[2].lm.vocab_size
    VLMModule(init_from=str(init_folder), model_inputs=inputs)
    VLMModule(init_from=str(init_folder), model_inputs={**inputs, "vocab_size": rows - 3})
    with pytest.raises(ValueError, match="does not match the model"):
        VLMModule(init_from=str(init_folder), model_inputs={**inputs, "vocab_size": rows + 3})
    with pytest.raises(ValueError, match="does not match the model"):
        VLMModule(init_from=str(init_folder), model_inputs={**inputs, "image_token_id": inputs["pad_token_id"]})
