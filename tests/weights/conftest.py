"""Fixtures for the weight tests: a tiny trained tokenizer."""

from __future__ import annotations

import pytest

TEXTS = [
    "a red circle above a blue square",
    "the green triangle is left of the yellow circle",
    "how many shapes are in the picture? three",
    "a small purple square next to a large orange triangle",
] * 20


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory):
    """A byte-level BPE tokenizer.json with the project's special tokens (ids 0..7)."""
    from data_pipelines.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_tokenizer(TEXTS, vocab_size=300).save(str(path))
    return path
