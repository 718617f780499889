"""What users hold from before the modules moved into rooms (2026-12-05) still works: a Lightning checkpoint and
int8 / int4 model folders written at that commit (tests/fixtures/before_rooms, a 1-layer micro model) load and
give the logits recorded then, and the old import paths resolve to the new modules with one warning each."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from commands import REPO
from PIL import Image

import mmllm
from mmllm.formats.checkpoint import model_from_checkpoint
from mmllm.formats.model_folder import load_model_folder
from mmllm.inference import VisionLanguageModel

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "before_rooms"
REFERENCE = json.loads((FIXTURE / "reference_logits.json").read_text())
QUESTION = "What colour is the circle?"


def last_logits(model, tokenizer) -> tuple[list[int], torch.Tensor]:
    """The recorded prompt's ids and the logits at its last position, computed as they were at that commit."""
    vlm = VisionLanguageModel(model, tokenizer)
    image = Image.open(FIXTURE / "scene.png").convert("RGB")
    encoded = vlm.processor.encode_question(QUESTION, image)
    with torch.no_grad():
        output = model(torch.tensor([encoded.input_ids]), pixel_values=vlm.processor.pixel_values([image]),
                       image_counts=torch.tensor([1]))
    return encoded.input_ids, output.logits[0, -1]


@pytest.mark.parametrize("name", ["last.ckpt", "model-int8", "model-int4"])
def test_a_file_written_before_the_move_loads_and_gives_the_logits_it_gave_then(name):
    path = FIXTURE / name
    model, tokenizer, _ = model_from_checkpoint(path) if path.is_file() else load_model_folder(path)
    input_ids, logits = last_logits(model, tokenizer)
    assert input_ids == REFERENCE[name]["input_ids"]
    torch.testing.assert_close(logits, torch.tensor(REFERENCE[name]["last_logits"]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["last.ckpt", "model-int8"])
def test_mmllm_load_answers_from_a_file_written_before_the_move(name):
    vlm = mmllm.load(FIXTURE / name)
    answer = vlm.ask(Image.open(FIXTURE / "scene.png"), QUESTION, max_new_tokens=4)
    assert isinstance(answer, str)
    assert (vlm.quantization is not None) == name.startswith("model-int")


OLD_PATHS = {
    "mmllm.hf_import": "mmllm.formats.hf_llama",
    "mmllm.quantization": "mmllm.compress.quantization",
    "mmllm.generation": "mmllm.model.generation",
    "data_pipelines.tokenizer": "data_pipelines.chat.tokenizer",
    "data_pipelines.shards": "data_pipelines.read.shards",
}


def test_old_module_paths_are_the_new_modules_and_warn_once_each():
    """In a fresh interpreter, so that no earlier import has used up the one warning."""
    script = f"""
import importlib, warnings, json
out = {{}}
for old, new in {OLD_PATHS!r}.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = importlib.import_module(old)
        again = importlib.import_module(old)
    out[old] = [first is importlib.import_module(new), first is again,
                [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]]
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    for old, (same_module, same_again, messages) in json.loads(result.stdout).items():
        assert same_module and same_again, old
        assert messages == [f"{old} moved to {OLD_PATHS[old]}; the old path goes in the next release"]


def test_names_the_docs_gave_from_processor_and_chat_still_resolve_with_a_warning():
    batching = importlib.import_module("data_pipelines.batching")
    conversation = importlib.import_module("data_pipelines.chat.conversation")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from data_pipelines.chat import normalise_conversation
        from data_pipelines.processor import collate, pack
    assert (collate, pack) == (batching.collate, batching.pack)
    assert normalise_conversation is conversation.normalise_conversation
    with pytest.raises(AttributeError):
        importlib.import_module("data_pipelines.processor").no_such_name  # noqa: B018
    assert all(issubclass(w.category, FutureWarning) for w in caught)
