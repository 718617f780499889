"""Preemption: SIGTERM (a cluster's stop) or SIGUSR1 (SLURM's warning before the time limit) during `mmllm fit`
writes `last.ckpt` within seconds and exits; `--ckpt_path last` then continues at the same step and data
position, so the resumed losses are those of a run never interrupted."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from fit_helpers import SUBPROCESS_ENV, column, fit_config, mmllm_command, read_metrics, write_config

from mmllm.formats.checkpoint import read_checkpoint
from mmllm.cli.main import main

pytestmark = pytest.mark.slow

MAX_STEPS = 40  # the same in every run (the schedule depends on it), and far past the signal at step 3


def config_file(shapes_data, run_dir):
    config = fit_config(shapes_data, run_dir, trainer={"max_steps": MAX_STEPS, "limit_val_batches": 0},
                        checkpoint={"monitor": None})  # no periodic checkpoint: only the signal writes one
    config["trainer"]["logger"][0]["init_args"]["flush_logs_every_n_steps"] = 1
    return write_config(config, run_dir / "config.yaml")


def losses(run_dir) -> dict[int, float]:
    try:
        return dict(column(read_metrics(run_dir), "train/loss"))
    except (AssertionError, KeyError, ValueError):  # no metrics.csv yet, or a row being written
        return {}


@pytest.fixture(scope="module")
def uninterrupted(shapes_data, tmp_path_factory) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    assert main(["fit", "--config", str(config_file(shapes_data, run_dir))]) == 0
    return losses(run_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signalled_fit_checkpoints_exits_and_resumes_with_the_uninterrupted_losses(
        shapes_data, tmp_path, uninterrupted, signum):
    config = config_file(shapes_data, tmp_path)
    process = subprocess.Popen(mmllm_command("fit", "--config", str(config)), cwd=tmp_path, env=SUBPROCESS_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while 3 not in losses(tmp_path):
        assert process.poll() is None, f"the run ended before step 3: {process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no step 3 after 240 s"
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)  # a hang guard, not a timing: the run stops at its next step
    assert process.returncode == 128 + signum, stderr[-3000:]
    name = signal.Signals(signum).name
    stopped_at = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"]
    assert 4 <= stopped_at < MAX_STEPS
    assert f"mmllm fit: stopped by {name} at step {stopped_at}" in stderr and "--ckpt_path last" in stderr
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))

    before = losses(tmp_path)
    assert main(["fit", "--config", str(config), "--ckpt_path", "last"]) == 0
    after = losses(tmp_path)
    assert sorted(after) == list(range(stopped_at, MAX_STEPS))  # the new run's log starts at the stopped step
    assert sorted(before) == list(range(stopped_at))
    resumed = {**before, **after}
    assert [resumed[step] for step in range(MAX_STEPS)] == pytest.approx(
        [uninterrupted[step] for step in range(MAX_STEPS)], rel=1e-5)
