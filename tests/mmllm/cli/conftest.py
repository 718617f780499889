"""Fixtures for the command-line mistake tests: an untrained tiny model folder made by `mmllm build`."""

from __future__ import annotations

import pytest

TEXTS = ["a red circle above a blue square", "what colour is the star? green", "is there a triangle? no"] * 20


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    from data_pipelines.chat.tokenizer import train_tokenizer
    from mmllm.cli.main import main

    root = tmp_path_factory.mktemp("cli-model")
    train_tokenizer(TEXTS, vocab_size=300).save(str(root / "tokenizer.json"))
    assert main(["build", "--preset", "tiny", "--tokenizer", str(root / "tokenizer.json"),
                 "--out", str(root / "model")]) == 0
    return root / "model"
