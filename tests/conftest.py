"""Fixtures every test folder shares: one torch thread for the session, and the tiny reference models."""

from __future__ import annotations

import os
import tempfile

# What mmllm measures or compiles for the machine (quantisation choices, torch.compile's kernels) goes to a folder
# of this session, never the user's ~/.cache; set before mmllm is imported, which points Inductor there.
os.environ.setdefault("MMLLM_CACHE_DIR", tempfile.mkdtemp(prefix="mmllm-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import images, prompt, tiny_model  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Models this small run fastest on one thread; more threads only contend on a shared 2-core machine. For the
    whole session, so that module and session fixtures that train run on one thread too: two processes of two
    OpenMP threads on two cores (a test beside the background fits, or beside a loaded CI machine's other work)
    spin against each other and run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture
def make_prompt():
    return prompt


@pytest.fixture
def make_images():
    return images
