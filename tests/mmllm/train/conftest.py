"""Fixtures for training tests: generated shapes shards and a tokenizer, and the CLI fits, made once per session.

32 px scenes; the train split's 64 samples lie in shards of 24, 24 and 16 (uneven on purpose, for DDP).
The `mmllm fit` subprocesses of test_fit_cli and test_ddp (DDP and FSDP) start as soon as the session does and run while
the in-process tests do (most of their time is importing Lightning, one core each).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fit_helpers import ddp_config, finish, fit_config, fsdp_config, start_mmllm, write_config

from data_pipelines.convert.shapes import generate_shapes
from data_pipelines.read.shards import find_shards, shard_texts
from data_pipelines.chat.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """data/shapes-like folder: train (64 scenes in shards of 24, 24, 16), val and test (16 each), tokenizer.json."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, train=64, val=16, test=16, image_size=32, maxcount=24, report=lambda *_: None)
    tokenizer = train_tokenizer(shard_texts(find_shards([root / "train"])), vocab_size=300)
    tokenizer.save(str(root / "tokenizer.json"))
    return root


BACKGROUND_FITS = {"test_fit_cli": [("fit", fit_config)], "test_ddp": [("ddp", ddp_config), ("fsdp", fsdp_config)]}


@pytest.fixture(scope="session", autouse=True)
def background_fits(request, shapes_data, tmp_path_factory) -> dict:
    """name -> (process, run folder) of the CLI fits the selected tests read, started at once."""
    modules = {item.module.__name__ for item in request.session.items}
    launched = {}
    for module, fits in BACKGROUND_FITS.items():
        for name, make_config in fits if module in modules else ():
            run_dir = tmp_path_factory.mktemp(name)
            config = write_config(make_config(shapes_data, run_dir), run_dir / "config.yaml")
            launched[name] = (start_mmllm("fit", "--config", str(config), cwd=run_dir), run_dir)
    yield launched
    for process, _ in launched.values():  # a fit no selected test waited for (a subset of its module ran)
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def finished_fit(background_fits):
    """Wait for one of the background fits; returns (CompletedProcess, run folder)."""

    def wait(name: str):
        process, run_dir = background_fits[name]
        return finish(process, run_dir, timeout=300), run_dir

    return wait
