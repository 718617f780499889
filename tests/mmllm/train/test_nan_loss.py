"""A loss that becomes NaN or infinite stops the run with a message naming the step and the batch's sources."""

from __future__ import annotations

import lightning as L
import pytest
from fit_helpers import MICRO_LM, MICRO_VISION

from mmllm.train.datamodule import VLMDataModule
from mmllm.train.module import VLMModule


def diverging_fit(shapes_data, tmp_path, step: int, bad: float, **options):
    """(data, module, trainer) of a micro-model fit whose training loss is multiplied by `bad` at `step`."""
    data = VLMDataModule(str(shapes_data / "tokenizer.json"), image_size=32, batch_size=4, num_workers=0,
                         sources=[{"kind": "caption", "path": str(shapes_data / "train" / "captions")}])
    module = VLMModule(lm=dict(MICRO_LM), vision=dict(MICRO_VISION), warmup_steps=1,
                       model_inputs=data.model_inputs, **options)
    forward, calls = module.model.forward, []

    def forward_that_diverges(**batch):
        output = forward(**batch)
        calls.append(1)
        if len(calls) == step + 1:  # no validation runs: one call per training step
            output.loss = output.loss * bad
        return output

    module.model.forward = forward_that_diverges
    trainer = L.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return data, module, trainer


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_the_run_naming_step_and_kinds(shapes_data, tmp_path, bad):
    data, module, trainer = diverging_fit(shapes_data, tmp_path, step=2, bad=bad)
    with pytest.raises(FloatingPointError, match=r"not finite at step 2 .*kinds \['caption'\]"):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2  # no optimiser step was taken with the bad loss


def test_a_check_every_few_steps_names_the_first_bad_step_without_reading_each_loss(shapes_data, tmp_path):
    data, module, trainer = diverging_fit(shapes_data, tmp_path, step=1, bad=float("nan"), finite_check_every=4)
    with pytest.raises(FloatingPointError, match=r"not finite from step 1 on \(checked every 4 steps"):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3  # read at the 4th step (step 3), before its optimiser step
