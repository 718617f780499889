"""Write a command's output (a folder or a file) beside its destination and rename it into place when complete,
so that a failed, interrupted or killed `mmllm export` / `mmllm build` leaves the previous output as it was."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mmllm.errors import UsageError

# What an earlier export holds (PEFT's layout: base/ and adapter/): only such a folder is replaced, never a
# folder of other things that --out happened to name.
EXPORT_MARKERS = ("config.json", "adapter_config.json", "*.gguf", "base/config.json")
EXPORT_SUBFOLDERS = {"base", "adapter"}


def is_earlier_export(out: Path) -> bool:
    """Whether `out` is a file, or a folder an export wrote (a model's files, no folders but PEFT's two)."""
    if not out.is_dir():
        return True
    folders = {path.name for path in out.iterdir() if path.is_dir()}
    return folders <= EXPORT_SUBFOLDERS and any(any(out.glob(marker)) for marker in EXPORT_MARKERS)


def refuse_existing(out: Path, overwrite: bool) -> None:
    """UsageError (one line) unless `out` is absent, an empty folder, or an earlier export that `overwrite` lets
    go."""
    if not (out.is_file() or out.is_symlink() or (out.is_dir() and any(out.iterdir()))):
        return
    names = sorted(path.name for path in out.iterdir()) if out.is_dir() else [out.name]
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    if not is_earlier_export(out):
        raise UsageError(f"{out} holds other things than an exported model ({shown}); choose another --out "
                         "(--overwrite replaces only an earlier export)")
    if not overwrite:
        raise UsageError(f"{out} already holds a model ({shown}); pass --overwrite to replace it")


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a file or folder, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(out: Path) -> None:
    """Remove what a killed earlier run left beside `out`: its temporary output, and the previous output it had
    moved aside (put back when `out` itself is missing: it was killed between the two renames)."""
    for path in sorted(out.parent.glob(f"{glob.escape(out.name)}.*-*")):
        kind, _, pid = path.name[len(out.name) + 1:].partition("-")
        if kind not in ("partial", "previous") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "previous" and not out.exists():
            os.rename(path, out)
        else:
            _remove(path)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises SystemExit (exit status 143) inside the block, so that the temporary output is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def atomic_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a path beside `out` (`OUT.partial-PID`) to write the output into; when the block ends normally it
    replaces `out` (a folder is moved aside first, then removed), else it is removed and `out` is untouched.

    UsageError before anything is written when `out` holds something and `overwrite` is False (see
    refuse_existing). An OSError naming a file under the temporary path names it under `out` instead.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    refuse_existing(out, overwrite)
    staging = out.with_name(f"{out.name}.partial-{os.getpid()}")
    _remove(staging)
    try:
        with _sigterm_raises():
            yield staging
            if staging.exists() or staging.is_symlink():
                _replace(staging, out)
    except OSError as error:
        if error.filename and str(error.filename).startswith(str(staging)):
            error.filename = str(out) + str(error.filename)[len(str(staging)):]
        raise
    finally:
        _remove(staging)


def _replace(staging: Path, out: Path) -> None:
    """Rename `staging` to `out`; a folder (or a file of another kind) at `out` is moved aside, then removed."""
    if not out.exists() or (out.is_file() and staging.is_file()):
        os.replace(staging, out)
        return
    aside = out.with_name(f"{out.name}.previous-{os.getpid()}")
    _remove(aside)
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)
        raise
    _remove(aside)
