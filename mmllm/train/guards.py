"""What `mmllm fit | validate | test` checks before it starts: that the checkpoint it resumes from is readable and
fits the model, and that no other run writes to its checkpoint folder. Each failure is a UsageError that names
the file (the command line prints it as one line with exit status 2)."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Optional

from mmllm.errors import UsageError

LOCK_FILE = ".fit.lock"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_first_process() -> bool:
    """True in the process that starts a (possibly distributed) run: the other ranks leave the checks to it."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def resolve_checkpoint(ckpt_path: Optional[str], folder: Optional[str]) -> Optional[Path]:
    """The file `--ckpt_path` names: a path, or `last` in the checkpoint folder; None when there is nothing to
    check here (no path; `best`, `hpc` or a remote URL, which Lightning resolves; a `last` not written yet)."""
    if not ckpt_path or ckpt_path in ("best", "hpc") or "://" in str(ckpt_path):
        return None
    if ckpt_path == "last":
        last = Path(folder) / "last.ckpt" if folder else None
        return last if last is not None and last.is_file() else None
    path = Path(ckpt_path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    return path


def check_checkpoint_fits(path: Path, module) -> None:
    """UsageError naming the checkpoint when it is truncated, not mmllm's, or holds weights of another shape."""
    from mmllm.formats.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(path, mmap=True)
    saved = checkpoint["state_dict"]
    expected = module.state_dict()
    lora = getattr(module, "lora", None)
    if lora is not None:  # a LoRA run's checkpoint holds what trains; the frozen rest comes from its base
        if "mmllm_lora" not in checkpoint:
            raise UsageError(f"checkpoint {path} is not a LoRA run's (it holds every weight): resume it without "
                             "model.lora, or start the LoRA run from its exported model with model.init_from")
        expected = {f"model.{name}": expected[f"model.{name}"] for name in lora.trained}
    elif "mmllm_lora" in checkpoint:
        raise UsageError(f"checkpoint {path} is a LoRA run's (adapters only): resume it with the same model.lora")
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    different = [name for name in expected if name in saved and tuple(saved[name].shape) != tuple(expected[name].shape)]
    if not (missing or unexpected or different):
        return
    if different:
        name = different[0]
        detail = (f"{name} is {tuple(saved[name].shape)} there, {tuple(expected[name].shape)} here "
                  f"({len(different)} weights differ in shape)")
    else:
        detail = f"missing weights {missing[:3]}" if missing else f"unexpected weights {unexpected[:3]}"
    raise UsageError(f"checkpoint {path} does not fit this model: {detail}")


class CheckpointFolderLock:
    """`.fit.lock` in a run's checkpoint folder while a fit writes there: a second fit pointed at the same folder
    stops instead of overwriting the first's checkpoints. A lock left by a process that no longer runs (killed)
    is taken over."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.owner = f"{socket.gethostname()} {os.getpid()}"

    def acquire(self) -> "CheckpointFolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = self._live_holder()
            if holder is not None:
                raise UsageError(f"another fit (process {holder}) is writing checkpoints to {self.path.parent}; "
                                 f"give this one another trainer.default_root_dir or checkpoint.dirpath") from None
            self.path.unlink(missing_ok=True)  # stale: its process is gone
            return self.acquire()
        with os.fdopen(descriptor, "w") as handle:
            handle.write(self.owner)
        return self

    def _live_holder(self) -> Optional[int]:
        try:
            host, pid = self.path.read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            return None  # unreadable or half-written: treated as stale
        if pid == os.getpid():
            return None  # left by an earlier fit of this same process
        if host != socket.gethostname():
            return pid  # another machine's process cannot be checked from here: assume it runs
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def release(self) -> None:
        with contextlib.suppress(OSError):  # already gone, or the folder went away: nothing to release
            if self.path.read_text() == self.owner:
                self.path.unlink()


def claim_checkpoint_folder(folder: Optional[str], resuming: bool, overwrite: bool) -> Optional[CheckpointFolderLock]:
    """Lock the folder a fit writes checkpoints to. A new (not resumed) fit refuses a folder that already holds
    another run's checkpoints unless `checkpoint.overwrite` says to replace them (they are deleted first)."""
    if not folder:
        return None  # Lightning's default: a new version folder per run, never shared
    lock = CheckpointFolderLock(folder).acquire()
    earlier = sorted(Path(folder).glob("*.ckpt"))
    if earlier and not resuming:
        if not overwrite:
            lock.release()
            raise UsageError(f"{folder} holds the checkpoints of an earlier run ({earlier[0].name}, ...): continue "
                             f"it with --ckpt_path last, start elsewhere with another checkpoint.dirpath, or replace "
                             f"them with --checkpoint.overwrite true")
        for path in earlier:  # replaced, as asked: otherwise Lightning would write last-v1.ckpt beside them
            path.unlink()
    return lock
