"""DDP on CPU: two gloo processes train on shards of uneven sizes, and neither waits forever for the other."""

from __future__ import annotations

import pytest
from fit_helpers import column, fit_config, read_metrics, run_mmllm, write_config

pytestmark = pytest.mark.slow


def test_two_cpu_processes_fit_uneven_shards_and_both_finish(shapes_data, tmp_path):
    # Train shards hold 24, 24 and 16 samples: rank 0 reads two shards, rank 1 one (a smaller one).
    config = fit_config(
        shapes_data, tmp_path,
        trainer={"max_steps": 4, "val_check_interval": 2, "accelerator": "cpu", "devices": 2,
                 "strategy": {"class_path": "lightning.pytorch.strategies.DDPStrategy",
                              "init_args": {"process_group_backend": "gloo"}}},
        data={"num_workers": 1},
    )
    result = run_mmllm("fit", "--config", str(write_config(config, tmp_path / "config.yaml")), cwd=tmp_path,
                       timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stderr + result.stdout  # the second process really ran
    rows = read_metrics(tmp_path)
    assert [step for step, _ in column(rows, "train/loss")] == [0, 1, 2, 3]
    assert [step for step, _ in column(rows, "val/loss")] == [1, 3]
    assert (tmp_path / "model" / "model.safetensors").is_file()
