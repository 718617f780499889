"""The recipe options of the shapes demo through `mmllm fit`: Muon, QK-norm, pixel shuffle, image-token rows and
columns, the time-bound schedule,
plain progress lines off a terminal, and a Muon run resumed from a checkpoint continuing as if never stopped."""

from __future__ import annotations

import pytest
from fit_helpers import column, fit_config, read_metrics, write_config

from mmllm.cli.main import main
from mmllm.formats.model_folder import load_model_folder

pytestmark = pytest.mark.slow

RECIPE = {"optimizer": "muon", "lr": 4e-3, "pixel_shuffle": 4, "image_positions": "rows_cols", "loss_weighting": "sqrt"}


def recipe_config(shapes_data, run_dir, **sections):
    config = fit_config(shapes_data, run_dir, **sections)
    config["model"] = {**config["model"], **RECIPE}
    config["model"]["lm"] = {**config["model"]["lm"], "qk_norm": True}
    config["model"]["vision"] = {**config["model"]["vision"], "patch_size": 4}  # 32 px: 8 x 8 patches -> 2 x 2 tokens
    return config


def test_muon_qk_norm_pixel_shuffle_fit_prints_progress_lines_and_exports_its_shape(shapes_data, tmp_path, capsys):
    config = recipe_config(shapes_data, tmp_path, trainer={"enable_progress_bar": True})
    assert main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml"))]) == 0
    printed = capsys.readouterr().out  # not a terminal: plain lines instead of a live bar
    assert "step 12/12 · loss " in printed and " it/s · " in printed
    assert "validation at step 6: " in printed and "vqa_accuracy" in printed

    rows = read_metrics(tmp_path)
    losses = [value for _, value in column(rows, "train/loss")]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5
    assert column(rows, "lr-MuonWithAdamW/lm_muon") and column(rows, "lr-MuonWithAdamW/lm_no_decay")
    per_type = {name for name in rows[0] if name.startswith("val/vqa_accuracy_")}  # one learning curve per type
    assert per_type and all(column(rows, name) for name in per_type)
    model, _, model_config = load_model_folder(tmp_path / "model")
    assert model_config.lm.qk_norm and model_config.pixel_shuffle == 4 and model_config.tokens_per_image == 4
    assert model.lm.layers[0].self_attn.q_norm is not None
    assert model_config.image_positions == "rows_cols" and model.projector.row_embed.abs().sum() > 0  # learned


def test_muon_run_resumed_from_a_checkpoint_gives_the_uninterrupted_losses(shapes_data, tmp_path):
    whole = recipe_config(shapes_data, tmp_path / "whole", checkpoint={"every_n_train_steps": 4, "save_top_k": -1,
                                                                       "monitor": None,
                                                                       "dirpath": str(tmp_path / "whole/ckpt")})
    whole["trainer"]["limit_val_batches"] = 0
    (tmp_path / "whole").mkdir()
    assert main(["fit", "--config", str(write_config(whole, tmp_path / "whole/config.yaml"))]) == 0
    expected = dict(column(read_metrics(tmp_path / "whole"), "train/loss"))

    resumed = recipe_config(shapes_data, tmp_path / "resumed")
    resumed["trainer"]["limit_val_batches"] = 0
    (tmp_path / "resumed").mkdir()
    assert main(["fit", "--config", str(write_config(resumed, tmp_path / "resumed/config.yaml")),
                 "--ckpt_path", str(tmp_path / "whole/ckpt/step000004.ckpt")]) == 0
    losses = dict(column(read_metrics(tmp_path / "resumed"), "train/loss"))
    assert sorted(losses) == list(range(4, 12))
    assert [losses[s] for s in sorted(losses)] == pytest.approx([expected[s] for s in sorted(losses)], rel=1e-5)


class StepClock:
    """time.monotonic for Lightning's Timer that advances a fixed tick at each reading: the time budget is then
    spent in a number of steps no machine's speed or load changes."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now


def test_schedule_by_time_ends_the_cosine_when_max_time_stops_the_run(shapes_data, tmp_path, monkeypatch):
    import lightning.pytorch.callbacks.timer as timer

    monkeypatch.setattr(timer, "time", StepClock(tick=0.02))  # a few readings a step: 8 s is about 100 steps
    config = recipe_config(shapes_data, tmp_path, trainer={"max_steps": 100000, "max_time": "00:00:00:08",
                                                           "limit_val_batches": 0})
    config["model"]["schedule_by_time"] = True
    assert main(["fit", "--config", str(write_config(config, tmp_path / "config.yaml"))]) == 0
    rates = column(read_metrics(tmp_path), "lr-MuonWithAdamW/lm_muon")
    steps = rates[-1][0]
    assert 20 < steps < 1000  # stopped by time, far from max_steps
    peak = RECIPE["lr"]
    assert max(rate for _, rate in rates) > 0.9 * peak  # the schedule went up ...
    assert rates[-1][1] < 0.1 * peak  # ... and came down to its floor (min_lr_ratio 0.05) as the budget ran out


def test_a_chunked_loss_trains_exactly_like_the_full_logits(shapes_data, tmp_path):
    losses = {}
    for name, chunk in (("full", None), ("chunked", 16)):
        config = recipe_config(shapes_data, tmp_path / name, trainer={"max_steps": 4, "limit_val_batches": 1,
                                                                      "val_check_interval": 4})
        config["model"]["loss_chunk"] = chunk
        (tmp_path / name).mkdir()
        assert main(["fit", "--config", str(write_config(config, tmp_path / name / "config.yaml"))]) == 0
        rows = read_metrics(tmp_path / name)
        losses[name] = [value for _, value in column(rows, "train/loss")] + [v for _, v in column(rows, "val/loss")]
    assert len(losses["full"]) == 5
    assert losses["chunked"] == pytest.approx(losses["full"], rel=1e-4)
