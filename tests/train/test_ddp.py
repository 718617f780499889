"""DDP on CPU: two gloo processes train on shards of uneven sizes, and neither waits forever for the other."""

from __future__ import annotations

import pytest
from fit_helpers import column, read_metrics

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
