"""Checkpoint files that are never half-written: save to a temporary file beside the target, then rename.

Lightning's own save goes through a temporary file in the system temp folder and `shutil.move`, which is a
copy (interruptible) when that folder is on another file system than the checkpoints, as on most clusters.
Here the temporary file sits in the checkpoint folder, so the final `os.replace` is atomic: a kill at any
moment leaves either the previous checkpoint or the new one, plus at most a stray `*.tmp` file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mmllm.errors import write_failure


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are atomic (remote paths keep Lightning's behaviour)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(str(path).removeprefix("file://"))
        get_filesystem(path).makedirs(str(path.parent), exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
            os.replace(temporary, path)
        except Exception as error:  # a full disk or quota: say which checkpoint could not be written
            failure = write_failure(error, str(path), "checkpoint")
            if failure is None:
                raise
            raise failure from error
        finally:
            temporary.unlink(missing_ok=True)
