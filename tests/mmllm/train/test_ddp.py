"""DDP and FSDP on CPU: two gloo processes train on shards of uneven sizes, and neither waits forever for the other;
FSDP (mmllm.train.fsdp.BlockFSDP, the strategy configs/gpu-small.yaml names) gives DDP's losses and weights, and a
run resumed from its checkpoint continues with them."""

from __future__ import annotations

import pytest
from fit_helpers import column, fsdp_config, read_metrics, start_mmllm, write_config

pytestmark = pytest.mark.slow


def test_two_cpu_processes_fit_uneven_shards_and_both_finish(finished_fit):
    # fit_helpers.ddp_config: rank 0 reads two train shards, rank 1 one (a smaller one); started by conftest.
    result, run_dir = finished_fit("ddp")  # killed after 300 s: a hang fails instead of blocking
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stderr + result.stdout  # the second process really ran
    rows = read_metrics(run_dir)
    assert [step for step, _ in column(rows, "train/loss")] == [0, 1, 2, 3]
    assert [step for step, _ in column(rows, "val/loss")] == [1, 3]
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_fsdp_gives_the_losses_and_weights_of_ddp_and_resumes_from_its_checkpoint(finished_fit, shapes_data,
                                                                                  tmp_path):
    from safetensors.torch import load_file

    from fit_helpers import finish

    ddp, ddp_dir = finished_fit("ddp")
    fsdp, fsdp_dir = finished_fit("fsdp")
    assert ddp.returncode == 0 and fsdp.returncode == 0, fsdp.stderr[-3000:]
    expected = dict(column(read_metrics(ddp_dir), "train/loss"))
    losses = dict(column(read_metrics(fsdp_dir), "train/loss"))
    assert sorted(losses) == sorted(expected) == [0, 1, 2, 3]
    assert [losses[s] for s in range(4)] == pytest.approx([expected[s] for s in range(4)], rel=1e-5)
    ddp_weights = load_file(ddp_dir / "model" / "model.safetensors")
    fsdp_weights = load_file(fsdp_dir / "model" / "model.safetensors")  # gathered from the shards by rank 0
    assert fsdp_weights.keys() == ddp_weights.keys()
    for name, tensor in ddp_weights.items():
        assert fsdp_weights[name].shape == tensor.shape
        assert (fsdp_weights[name] - tensor).abs().max() <= 1e-5, name

    config = write_config(fsdp_config(shapes_data, tmp_path), tmp_path / "config.yaml")
    resumed = finish(start_mmllm("fit", "--config", str(config), "--ckpt_path",
                                 str(fsdp_dir / "checkpoints" / "step02.ckpt"), cwd=tmp_path), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = dict(column(read_metrics(tmp_path), "train/loss"))
    assert sorted(again) == [2, 3]
    assert [again[s] for s in (2, 3)] == pytest.approx([expected[s] for s in (2, 3)], rel=1e-5)
