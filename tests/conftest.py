"""Fixtures every test folder shares: one torch thread per test, and the tiny reference models."""

from __future__ import annotations

import pytest
import torch
from tiny_models import images, prompt, tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small run fastest on one thread; more threads only contend on a shared 2-core machine."""
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
