"""Reweighting by inverse group frequency and group DRO: the losses against hand computations, a group DRO fit that
logs its group weights, and bad bias-mitigation options said in one line with status 2 through `mmllm fit`."""

from __future__ import annotations

import math

import pytest
import torch
from fit_helpers import fit_config, read_metrics, write_config

from mmllm.cli.main import main
from mmllm.train.group_loss import group_dro_step, group_mean_losses, reweighted_loss

# Two rows; targets are labels[:, 1:]. Row 0 supervises 3 targets (loss 1, 2, 3), row 1 one (loss 8).
LABELS = torch.tensor([[-100, 5, 6, 7, -100], [-100, -100, -100, 9, -100]])
LOSSES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.0, 0.0, 8.0, 0.0]])


def test_reweighting_weighs_each_rows_tokens_by_its_group_weight():
    loss = reweighted_loss(LOSSES, LABELS, torch.tensor([1.0, 3.0]))
    assert float(loss) == pytest.approx((1 + 2 + 3 + 3 * 8) / (3 + 3 * 1))
    assert float(reweighted_loss(LOSSES, LABELS, torch.ones(2))) == pytest.approx((1 + 2 + 3 + 8) / 4)


def test_group_dro_moves_weight_to_the_worst_group_as_sagawa_et_al():
    losses = group_mean_losses(LOSSES, LABELS, torch.tensor([0, 1]), 3)  # group 2 is absent from the batch
    assert losses.tolist() == pytest.approx([2.0, 8.0, 0.0])
    q, robust = group_dro_step(torch.full((3,), 1 / 3), losses, step_size=0.1)
    expected = [math.exp(0.1 * 2), math.exp(0.1 * 8), 1.0]
    expected = [e / sum(expected) for e in expected]
    assert q.tolist() == pytest.approx(expected)
    assert float(robust) == pytest.approx(expected[0] * 2 + expected[1] * 8)


def test_a_group_dro_fit_logs_weights_that_sum_to_one_and_resumes_with_them(shapes_data, tmp_path, capsys):
    config = fit_config(shapes_data, tmp_path, trainer={"max_steps": 2, "val_check_interval": 2},
                        model={"group_dro": {"by": "shape", "step_size": 0.5}})
    path = write_config(config, tmp_path / "config.yaml")
    assert main(["fit", "--config", str(path)]) == 0
    rows = [row for row in read_metrics(tmp_path) if row.get("train/loss")]
    weights = [{k: float(v) for k, v in row.items() if k.startswith("group_dro/q_") and v} for row in rows]
    assert len(weights) == 2 and len(weights[0]) > 2  # circle, square, ... and their combinations
    assert all(sum(w.values()) == pytest.approx(1, abs=1e-5) for w in weights)
    assert weights[0] != weights[1]  # moved online
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["mmllm_group_dro"]
    assert dict(zip(dict(saved["names"]), saved["q"])) == pytest.approx(
        {k.removeprefix("group_dro/q_").replace("_", " "): v for k, v in weights[1].items()}, abs=1e-6)
    capsys.readouterr()
    assert main(["fit", "--config", str(path), "--ckpt_path", "last", "--trainer.max_steps", "3"]) == 0
    said = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("model.group_dro by"))
    assert said.endswith(", ".join(f"{group} q={q:.3f}" for (group, _), q in zip(saved["names"], saved["q"])))


@pytest.mark.parametrize("option, value, said", [
    ("--data.balance", "{by: colr}", "data.balance.by: no sample among the first"),
    ("--data.balance", "{by: shape, mode: oversample}", "resample"),
    ("--model.group_dro", "{by: colr}", "model.group_dro.by: no sample among the first"),
    ("--model.group_dro", "{by: shape, step_size: 0}", "step_size must be above 0"),
    ("--data.counterfactual", "{swaps: red}", "WORD=ALTERNATIVE"),
])
def test_bad_bias_mitigation_options_exit_2_with_one_line(shapes_data, tmp_path, capsys, option, value, said):
    config = fit_config(shapes_data, tmp_path, trainer={"max_steps": 1})
    path = write_config(config, tmp_path / "config.yaml")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(path), option, value])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and said in errors[0], errors
