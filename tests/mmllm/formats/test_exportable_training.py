"""A model trained here from a preset in SmolVLM's format (linear projector, Idefics3's image markup, resize and
tiles, `data.chat_template: smolvlm`, a tokenizer with `--tokens smolvlm`) exports to transformers and to
llama.cpp, and both answer greedily as `mmllm ask` does."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

pytest.importorskip("transformers")

from idefics3_helpers import hf_inputs, photo, write_shards  # noqa: E402
from mmllm.cli.main import main  # noqa: E402
from mmllm.formats.model_folder import load_model_folder  # noqa: E402

QUESTIONS = ["What colour is the circle?", "Describe the image."]
IMAGES = [(96, 96), (70, 50), (40, 90)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model fitted from the tiny preset in SmolVLM's format; its run folder and exported model folder."""
    run = tmp_path_factory.mktemp("exportable")
    data = write_shards(run / "data")
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "300", "--tokens", "smolvlm",
                 "--out", str(run / "tokenizer.json")]) == 0
    config = {
        "seed_everything": 0,
        "model": {"preset": "tiny", "lm": {"n_layers": 2, "dim": 64, "n_heads": 4, "n_kv_heads": 2, "mlp_dim": 128},
                  "vision": {"patch_size": 8, "n_layers": 1, "dim": 32, "n_heads": 2, "mlp_dim": 64},
                  "pixel_shuffle": 2, "projector": "linear", "image_markup": "idefics3", "resize": "idefics3",
                  "longest_edge": 96, "image_splitting": True, "lr": 3e-3, "warmup_steps": 2},
        "data": {"tokenizer": str(run / "tokenizer.json"), "chat_template": "smolvlm", "image_size": 48,
                 "batch_size": 6, "num_workers": 0, "shuffle_buffer": 8, "val_vqa_questions": 0,
                 "sources": [{"kind": kind, "path": str(data / folder), "weight": 1.0}
                             for kind, folder in (("caption", "captions"), ("chat", "chat"), ("text", "text"))]},
        "trainer": {"max_steps": 30, "log_every_n_steps": 5, "limit_val_batches": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(run), "logger": False},
        "checkpoint": {"dirpath": str(run / "checkpoints")},
        "export": {"out": str(run / "model")},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(run / "config.yaml")]) == 0
    return run, run / "model"


def ask(folder, path, question: str, capsys) -> str:
    capsys.readouterr()
    assert main(["ask", "--model", str(folder), str(path), question, "--max-new-tokens", "10", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answer"]


def test_the_trained_model_keeps_smolvlms_format(trained):
    _, folder = trained
    _, tokenizer, config = load_model_folder(folder)
    assert (config.projector, config.image_markup, config.resize, config.image_splitting) == \
        ("linear", "idefics3", "idefics3", True)
    assert tokenizer.id_to_token(config.image_token_id) == "<image>"
    assert tokenizer.id_to_token(config.eos_token_ids[0]) == "<end_of_utterance>"
    assert config.chat_template.startswith("<|im_start|>")


def test_its_transformers_export_answers_as_mmllm_ask(trained, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run, folder = trained
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf", backend="pil")  # the PIL one, ours reproduces
    for seed, size in enumerate(IMAGES):
        image, path = photo(*size, seed=seed), tmp_path / f"{seed}.png"
        image.save(path)
        for question in QUESTIONS:
            inputs = hf_inputs(processor, image, question)
            assert inputs["pixel_values"].shape[1] > 1  # tiles and the whole image
            with torch.no_grad():
                generated = model.generate(**inputs, max_new_tokens=10, do_sample=False)
            expected = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            assert ask(folder, path, question, capsys) == expected[0].strip(), (size, question)


def test_its_gguf_export_answers_in_llama_cpp_as_mmllm_ask(trained, tmp_path, capsys):
    pytest.importorskip("gguf")
    pytest.importorskip("llama_cpp")  # built from source by .ci/setup
    from mmllm.formats.llama_cpp import LlamaCpp

    _, folder = trained
    _, tokenizer, config = load_model_folder(folder)
    assert main(["export", str(folder), "--format", "gguf", "--out", str(tmp_path / "gguf")]) == 0
    runner = LlamaCpp(tmp_path / "gguf" / "model-f16.gguf", tmp_path / "gguf" / "mmproj-f16.gguf")
    try:
        for seed, size in enumerate(IMAGES):
            path = tmp_path / f"{seed}.png"
            photo(*size, seed=seed).save(path)
            for question in QUESTIONS:
                ids = runner.answer(runner.question_prompt(config.chat_template, question), [path],
                                    list(config.eos_token_ids), max_new_tokens=10)
                answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
                assert answer == ask(folder, path, question, capsys), (size, question)
    finally:
        runner.close()
