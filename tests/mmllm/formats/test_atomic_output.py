"""mmllm.formats.atomic_output: an output written beside OUT replaces it only when complete, only with overwrite,
and only when OUT is an earlier export; what a killed run left beside OUT is removed or put back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmllm.errors import UsageError
from mmllm.formats.atomic_output import atomic_output, clean_stale


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_failed_write_leaves_the_previous_folder_and_nothing_beside_it(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(RuntimeError), atomic_output(out, overwrite=True) as folder:
        folder.mkdir()
        (folder / "config.json").write_text('{"new": 1}')
        raise RuntimeError("disk full")
    assert snapshot(out) == {"config.json": b"{}"}
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_an_earlier_export_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "stale.safetensors").write_text("old")
    with pytest.raises(UsageError, match="already holds a model.*--overwrite"), atomic_output(out) as folder:
        pass
    with atomic_output(out, overwrite=True) as folder:
        folder.mkdir()
        (folder / "config.json").write_text('{"new": 1}')
    assert snapshot(out) == {"config.json": b'{"new": 1}'}  # the whole folder replaced: no stale file kept
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_a_folder_that_is_not_an_export_is_never_replaced(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="other things than an exported model"), \
            atomic_output(tmp_path, overwrite=True):
        pass
    assert (tmp_path / "checkpoints").is_dir()


def test_what_a_killed_run_left_is_removed_or_put_back(tmp_path):
    out, pid = tmp_path / "model", dead_pid()
    (tmp_path / f"model.partial-{pid}").mkdir()  # killed while writing
    previous = tmp_path / f"model.previous-{pid}"  # killed between moving OUT aside and renaming the new one in
    previous.mkdir()
    (previous / "config.json").write_text("{}")
    (tmp_path / f"model.partial-{os.getppid()}").mkdir()  # a live process's: left alone
    clean_stale(out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", f"model.partial-{os.getppid()}"]
    assert snapshot(out) == {"config.json": b"{}"}
