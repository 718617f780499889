"""Kill and resume: a fit killed with SIGKILL mid-run continues from `last` at its step and gives the losses of the
same config run without a kill; every checkpoint it left loads."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
from fit_helpers import SUBPROCESS_ENV, column, fit_config, mmllm_command, read_metrics, write_config

from mmllm.formats.checkpoint import read_checkpoint
from mmllm.cli.main import main

pytestmark = pytest.mark.slow


def logged_steps(run_dir) -> list[int]:
    try:
        return [step for step, _ in column(read_metrics(run_dir), "train/loss")]
    except (AssertionError, KeyError, ValueError):  # no metrics.csv yet, or a row being written
        return []


def kill_after_step(command: list[str], run_dir, step: int, timeout: float = 240) -> None:
    """Run `command` until its metrics.csv shows `step`, then SIGKILL it (it may be writing a checkpoint)."""
    process = subprocess.Popen(command, cwd=run_dir, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while step not in logged_steps(run_dir):
            assert process.poll() is None, f"the run ended before step {step}: {process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"no step {step} after {timeout} s"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


MAX_STEPS = 60  # the same in every run (the schedule depends on it), and far past the kill at step 4


@pytest.fixture
def config_file(shapes_data, tmp_path):
    # Checkpoints every 3 steps, all kept; no validation, so nothing but steps decides when they are written.
    # An epoch is 16 batches, so the kill lands mid-epoch.
    config = fit_config(shapes_data, tmp_path, trainer={"max_steps": MAX_STEPS, "limit_val_batches": 0},
                        checkpoint={"every_n_train_steps": 3, "save_top_k": -1, "monitor": None})
    config["trainer"]["logger"][0]["init_args"]["flush_logs_every_n_steps"] = 1
    return write_config(config, tmp_path / "config.yaml")


@pytest.fixture(scope="module")
def uninterrupted(shapes_data, tmp_path_factory) -> dict[int, float]:
    """step -> loss of the same config run to the end without a kill: the reference the resumed run must equal."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    config = fit_config(shapes_data, run_dir, trainer={"max_steps": MAX_STEPS, "limit_val_batches": 0},
                        checkpoint={"every_n_train_steps": 3, "save_top_k": -1, "monitor": None})
    assert main(["fit", "--config", str(write_config(config, run_dir / "config.yaml"))]) == 0
    return dict(column(read_metrics(run_dir), "train/loss"))


def test_killed_fit_resumes_from_last_with_the_uninterrupted_losses_and_leaves_loadable_checkpoints(
        config_file, tmp_path, uninterrupted):
    checkpoints = tmp_path / "checkpoints"
    kill_after_step(mmllm_command("fit", "--config", str(config_file)), tmp_path, step=4)
    killed_losses = dict(column(read_metrics(tmp_path), "train/loss"))

    left = sorted(checkpoints.glob("*.ckpt"))
    assert {"step000003.ckpt", "last.ckpt"} <= {path.name for path in left}
    for path in left:  # read_checkpoint raises UsageError on a truncated or foreign file
        assert read_checkpoint(path)["global_step"] % 3 == 0
    killed_at = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert 3 <= killed_at < MAX_STEPS

    # The resumed run in this process (the same CLI code; one Lightning import less on a busy machine).
    assert main(["fit", "--config", str(config_file), "--ckpt_path", "last"]) == 0
    resumed_losses = dict(column(read_metrics(tmp_path), "train/loss"))
    assert sorted(resumed_losses) == list(range(killed_at, MAX_STEPS))
    # The killed run's steps, and the resumed run's, are those of the run that was never killed: same weights,
    # optimiser and schedule state, and the data continues where the killed run was.
    assert [killed_losses[step] for step in sorted(killed_losses)] == pytest.approx(
        [uninterrupted[step] for step in sorted(killed_losses)], rel=1e-5)
    assert [resumed_losses[step] for step in range(killed_at, MAX_STEPS)] == pytest.approx(
        [uninterrupted[step] for step in range(killed_at, MAX_STEPS)], rel=1e-5)
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == MAX_STEPS
