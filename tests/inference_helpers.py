"""Helpers of the inference tests: run `mmllm` in a fresh process on one thread; the trained-run record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from commands import REPO, run_mmllm  # noqa: F401 (re-exported for the inference tests)


@dataclass
class TrainedRun:
    root: Path
    model: Path  # the exported model folder
    checkpoint: Path  # the Lightning checkpoint of the same weights
    data: Path  # shapes dataset: train/, val/, test_compositional/ each with captions/ and chat/
    images: Path  # a folder of PNG files taken from the val caption shard

    @property
    def image(self) -> Path:
        return sorted(self.images.glob("*.png"))[0]
