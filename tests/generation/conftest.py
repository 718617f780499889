"""Fixtures for generation tests: the tiny-model factories of tests/model/conftest.py, loaded by path."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("tiny_vlm_fixtures", Path(__file__).parents[1] / "model" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

one_thread, make_model = _fixtures.one_thread, _fixtures.make_model
make_prompt, make_images = _fixtures.make_prompt, _fixtures.make_images
