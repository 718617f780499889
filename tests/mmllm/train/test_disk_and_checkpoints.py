"""Full disks and bad checkpoints: a write that fails half-way leaves the previous file intact and names the
error; a truncated or foreign checkpoint exits 2 naming the file; two fits never share checkpoints."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys

import pytest
import torch
from fit_helpers import SUBPROCESS_ENV, fit_config, mmllm_command, write_config

from mmllm.cli.main import main

pytestmark = pytest.mark.slow

FILE_SIZE_LIMIT = 64 * 1024  # bytes: far below a checkpoint or model.safetensors, above logs and configs


def small_files_only():
    """In the child: writes past FILE_SIZE_LIMIT fail with EFBIG (SIGXFSZ ignored), as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.fixture(scope="module")
def finished_run(shapes_data, tmp_path_factory):
    """A 4-step fit: its last.ckpt and exported model folder."""
    run_dir = tmp_path_factory.mktemp("finished")
    config = write_config(fit_config(shapes_data, run_dir, trainer={"max_steps": 4, "limit_val_batches": 0},
                                     checkpoint={"monitor": None}), run_dir / "config.yaml")
    assert main(["fit", "--config", str(config)]) == 0
    return run_dir, config


def test_a_checkpoint_save_that_fails_half_way_keeps_the_previous_checkpoint(tmp_path):
    target = tmp_path / "last.ckpt"
    torch.save({"step": 1}, target)
    previous = target.read_bytes()
    script = (
        "import torch\n"
        "from mmllm.train.checkpoint_io import AtomicCheckpointIO\n"
        "try:\n"
        f"    AtomicCheckpointIO().save_checkpoint({{'weights': torch.zeros(100_000)}}, {str(target)!r})\n"
        "except OSError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=SUBPROCESS_ENV,
                            preexec_fn=small_files_only, timeout=120)
    assert "File too large" in result.stdout, result.stderr
    assert target.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind


def test_an_export_that_fails_half_way_keeps_the_previous_folder_and_names_the_error(finished_run, tmp_path):
    run_dir, _ = finished_run
    out = run_dir / "model"
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    result = subprocess.run(mmllm_command("export", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out),
                                          "--overwrite"),
                            capture_output=True, text=True, env=SUBPROCESS_ENV, preexec_fn=small_files_only,
                            timeout=240)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and str(out) in lines[0], result.stderr
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_a_fit_whose_checkpoint_cannot_be_written_stops_with_one_line_and_keeps_the_last_one(finished_run):
    run_dir, config = finished_run
    last = run_dir / "checkpoints" / "last.ckpt"
    previous = last.read_bytes()
    result = subprocess.run(mmllm_command("fit", "--config", str(config), "--trainer.max_steps", "6",
                                          "--ckpt_path", "last"),
                            cwd=run_dir, capture_output=True, text=True, env=SUBPROCESS_ENV,
                            preexec_fn=small_files_only, timeout=240)
    assert result.returncode == 1, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("mmllm fit: error:")]
    assert len(error) == 1 and "File too large" in error[0] and "Traceback" not in result.stderr
    assert last.read_bytes() == previous
    assert not list(last.parent.glob("*.tmp"))


def fit_error(argv: list[str], capsys) -> list[str]:
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *argv])
    assert stopped.value.code == 2
    return [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("INFO: ")]


def test_a_truncated_checkpoint_given_to_ckpt_path_exits_2_naming_it(finished_run, tmp_path, capsys):
    run_dir, config = finished_run
    truncated = tmp_path / "cut.ckpt"
    data = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    lines = fit_error(["--config", str(config), "--ckpt_path", str(truncated),
                       "--trainer.default_root_dir", str(tmp_path / "other")], capsys)
    assert len(lines) == 1 and str(truncated) in lines[0] and "corrupt or truncated" in lines[0]


def test_a_checkpoint_of_another_shape_exits_2_naming_the_file_and_the_mismatch(finished_run, tmp_path, capsys):
    # --ckpt_path brings the model options it was trained with; the data's tokenizer still sets the vocabulary,
    # so a checkpoint trained with another tokenizer has an embedding of another shape.
    from data_pipelines.chat.tokenizer import train_tokenizer

    run_dir, config = finished_run
    other = tmp_path / "other-tokenizer.json"
    train_tokenizer([f"another text {i} entirely" for i in range(50)], vocab_size=280).save(str(other))
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    lines = fit_error(["--config", str(config), "--data.tokenizer", str(other), "--ckpt_path", str(checkpoint),
                       "--checkpoint.dirpath", str(tmp_path / "other" / "checkpoints")], capsys)
    assert len(lines) == 1
    assert str(checkpoint) in lines[0] and "does not fit this model" in lines[0]
    assert "embed_tokens.weight is (" in lines[0] and "there" in lines[0] and "here" in lines[0]


def test_a_truncated_checkpoint_given_to_init_from_exits_2_naming_it(finished_run, tmp_path, capsys):
    run_dir, config = finished_run
    truncated = tmp_path / "cut.ckpt"
    data = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    lines = fit_error(["--config", str(config), "--model.init_from", str(truncated), "--model.lm", "null",
                       "--model.vision", "null"], capsys)
    assert len(lines) == 1 and str(truncated) in lines[0] and "corrupt or truncated" in lines[0]


def test_a_second_fit_into_a_folder_with_checkpoints_refuses_instead_of_overwriting(finished_run, capsys):
    run_dir, config = finished_run
    checkpoints = {path.name: path.stat().st_mtime_ns for path in (run_dir / "checkpoints").iterdir()}
    lines = fit_error(["--config", str(config)], capsys)
    assert len(lines) == 1 and str(run_dir / "checkpoints") in lines[0] and "--ckpt_path last" in lines[0]
    assert {path.name: path.stat().st_mtime_ns for path in (run_dir / "checkpoints").iterdir()} == checkpoints


def test_two_fits_at_once_into_one_folder_the_second_refuses(shapes_data, tmp_path):
    # The first fit would run for hours (it is killed at the end): it holds the lock however slow the second is.
    config = write_config(fit_config(shapes_data, tmp_path, trainer={"max_steps": 10**6, "limit_val_batches": 0}),
                          tmp_path / "config.yaml")
    first = subprocess.Popen(mmllm_command("fit", "--config", str(config)), cwd=tmp_path, env=SUBPROCESS_ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "checkpoints" / ".fit.lock"
        for _ in range(2400):
            if lock.exists() or first.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"])
        assert lock.exists(), first.stderr.read()[-3000:] if first.poll() is not None else "no lock"
        second = subprocess.run(mmllm_command("fit", "--config", str(config)), cwd=tmp_path, env=SUBPROCESS_ENV,
                                capture_output=True, text=True, timeout=240)
        assert second.returncode == 2
        assert f"another fit (process {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)


def test_checkpoint_overwrite_lets_a_new_fit_replace_an_earlier_runs_checkpoints(shapes_data, tmp_path):
    config = write_config(fit_config(shapes_data, tmp_path, trainer={"max_steps": 2, "limit_val_batches": 0},
                                     checkpoint={"monitor": None}), tmp_path / "config.yaml")
    assert main(["fit", "--config", str(config)]) == 0
    first = (tmp_path / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "3", "--checkpoint.overwrite", "true"]) == 0
    replaced = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert replaced["global_step"] == 3 and (tmp_path / "checkpoints" / "last.ckpt").stat().st_mtime_ns > first
    assert not (tmp_path / "checkpoints" / ".fit.lock").exists()  # released when the fit ended
