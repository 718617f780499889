"""Fixtures for training tests: generated shapes shards and a tokenizer, made once per session.

32 px scenes; the train split's 64 samples lie in shards of 24, 24 and 16 (uneven on purpose, for DDP).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_pipelines.shapes import generate_shapes
from data_pipelines.tokenizer import find_shards, shard_texts, train_tokenizer


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """data/shapes-like folder: train (64 scenes in shards of 24, 24, 16), val and test (16 each), tokenizer.json."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, train=64, val=16, test=16, image_size=32, maxcount=24, report=lambda *_: None)
    tokenizer = train_tokenizer(shard_texts(find_shards([root / "train"])), vocab_size=300)
    tokenizer.save(str(root / "tokenizer.json"))
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is as fast as two on a shared 2-core machine, and leaves room for others."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
