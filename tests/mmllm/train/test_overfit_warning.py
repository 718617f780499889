"""A run whose validation loss keeps rising says so once, naming the flags that fix it; and those flags work."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fit_helpers import fit_config, read_metrics, column, write_config
from lightning.pytorch.trainer.states import TrainerFn

from mmllm.cli.main import main
from mmllm.train.callbacks import OverfitWarning


def validate(callback, step, loss):
    trainer = SimpleNamespace(callback_metrics={"val/loss": torch.tensor(loss)}, sanity_checking=False,
                              global_step=step, is_global_zero=True, state=SimpleNamespace(fn=TrainerFn.FITTING))
    callback.on_validation_end(trainer, None)


def test_three_rises_in_a_row_are_said_once_in_one_line(capsys):
    callback = OverfitWarning()
    for step, loss in [(100, 2.0), (200, 1.5), (300, 1.6), (400, 1.55), (500, 1.7), (600, 1.8)]:
        validate(callback, step, loss)
    assert capsys.readouterr().err == ""  # rose twice in a row (1.55 -> 1.7 -> 1.8), not three times
    validate(callback, 700, 1.9)
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "1.55 -> 1.7 -> 1.8 -> 1.9" in said and "best 1.5 at step 200" in said
    assert "--export.use_best true" in said and "EarlyStopping" in said
    validate(callback, 800, 2.0)
    assert capsys.readouterr().err == ""  # once per run
    restored = OverfitWarning()
    restored.load_state_dict(callback.state_dict())  # a resumed run does not say it again
    validate(restored, 900, 2.1)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_the_early_stopping_flags_it_names_stop_a_fit(shapes_data, tmp_path):
    config = fit_config(shapes_data, tmp_path, trainer={"max_steps": 8, "val_check_interval": 2})
    # min_delta larger than any loss: the second validation is "no better", and patience 0 stops there
    assert main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml")),
                 "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/loss",
                 "--trainer.callbacks.patience", "0", "--trainer.callbacks.min_delta", "100"]) == 0
    steps = [step for step, _ in column(read_metrics(tmp_path), "train/loss")]
    assert max(steps) < 7
