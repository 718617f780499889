"""A language model alone (`mmllm build --lm FILE.gguf` without --preset) through every command a user runs on
it: generate, chat, eval --task text, serve with text messages and fit on text shards work and agree with the
Python API; caption, ask and image messages are refused in one line; export --format hf is a LlamaForCausalLM
that transformers runs to our logits."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from commands import http, run_mmllm, start_server
from PIL import Image
from tiny_models import TEXT, tiny_text_model

import mmllm
from data_pipelines.convert.writers import ShardWriter
from mmllm.formats.gguf import export_gguf


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    """A text-only model folder built from a GGUF file, as a user gets one."""
    root = tmp_path_factory.mktemp("text-only")
    model, tokenizer = tiny_text_model()
    export_gguf(model, tokenizer, model.config, root, name="tiny", kinds=("f32",))
    result = run_mmllm("build", "--lm", root / "model-f32.gguf", "--out", root / "model")
    assert result.returncode == 0, result.stderr
    assert "a text-only model" in result.stdout
    return root / "model"


@pytest.fixture(scope="module")
def text_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text-shards")
    with ShardWriter(out, maxcount=100, report=lambda *_: None) as writer:
        for text in TEXT:
            writer.write_text(text)
    return out


@pytest.fixture(scope="module")
def chat_shards(tmp_path_factory) -> Path:
    """Text-only conversations (no image member), in LLaVA's layout."""
    out = tmp_path_factory.mktemp("chat-shards")
    with ShardWriter(out, maxcount=100, report=lambda *_: None) as writer:
        for index, text in enumerate(TEXT):
            writer.write_chat([{"from": "human", "value": f"Say sentence {index}."}, {"from": "gpt", "value": text}])
    return out


def test_generate_and_chat_print_what_the_python_api_answers(text_model):
    vlm = mmllm.load(text_model)
    expected = vlm.generate("The quick brown", max_new_tokens=6)
    result = run_mmllm("generate", "--model", text_model, "The quick brown", "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected.strip()
    answer = vlm.chat([{"role": "user", "content": "Hi there"}], max_new_tokens=5)
    result = run_mmllm("chat", "--model", text_model, "--max-new-tokens", "5", stdin="Hi there\n")
    assert result.returncode == 0, result.stderr
    assert answer in result.stdout


@pytest.mark.parametrize("command", [["caption"], ["ask", "QUESTION"], ["chat"]])
def test_image_commands_are_refused_in_one_line(text_model, tmp_path, command):
    image = tmp_path / "a.png"
    Image.new("RGB", (16, 16), "red").save(image)
    args = [command[0], "--model", text_model, image, *command[1:]]
    result = run_mmllm(*args, stdin="What is it?\n")
    assert result.returncode == 2
    assert result.stderr.strip() == "mmllm: error: this model is a language model alone: it reads no images"


def test_eval_text_reports_bits_per_byte_recomputed_from_the_model(text_model, text_shards, tmp_path):
    result = run_mmllm("eval", "--model", text_model, "--data", text_shards, "--task", "text",
                       "--out", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    vlm = mmllm.load(text_model)
    nll, tokens = zip(*[r for r in vlm.text_nll(TEXT) if r is not None])
    bits = sum(nll) / sum(len(t.encode("utf-8")) for t in TEXT) / torch.log(torch.tensor(2.0)).item()
    assert report["metrics"]["bits_per_byte"] == pytest.approx(bits, rel=1e-4)


def test_serve_answers_text_messages_and_refuses_an_image_with_a_400(text_model):
    process, url = start_server("--model", text_model, "--max-tokens", "16")
    try:
        vlm = mmllm.load(text_model)
        messages = [{"role": "user", "content": "Paris is"}]
        status, body = http("POST", f"{url}/v1/chat/completions",
                            {"model": "m", "messages": messages, "max_tokens": 6})
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == vlm.chat(messages, max_new_tokens=6)
        png = io.BytesIO()
        Image.new("RGB", (8, 8)).save(png, "PNG")
        uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
        content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "What?"}]
        status, body = http("POST", f"{url}/v1/chat/completions",
                            {"model": "m", "messages": [{"role": "user", "content": content}]})
        assert status == 400 and "reads no images" in body["error"]["message"]
    finally:
        process.terminate()
        process.wait()


@pytest.mark.slow
def test_fit_on_text_and_chat_shards_from_a_text_only_model_trains_and_exports_one(text_model, text_shards,
                                                                                 chat_shards, tmp_path):
    config = {
        "seed_everything": 0,
        "model": {"init_from": str(text_model), "lr": 1e-3, "warmup_steps": 1},
        "data": {"tokenizer": str(text_model / "tokenizer.json"), "batch_size": 4, "num_workers": 0,
                 "max_length": 64, "val_vqa_questions": 0,
                 "sources": [{"kind": "text", "path": str(text_shards), "weight": 1.0},
                             {"kind": "chat", "path": str(chat_shards), "weight": 1.0}],
                 "val_sources": [{"kind": "text", "path": str(text_shards)}]},
        "trainer": {"max_steps": 6, "val_check_interval": 6, "check_val_every_n_epoch": None,
                    "limit_val_batches": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run")},
        "export": {"out": str(tmp_path / "tuned")},
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    result = run_mmllm("fit", "--config", tmp_path / "fit.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    tuned = mmllm.load(tmp_path / "tuned")
    before = mmllm.load(text_model)
    assert tuned.config.vision is None and tuned.config.chat_template == before.config.chat_template
    ids = torch.tensor([before.tokenizer.encode(TEXT[0]).ids])
    with torch.no_grad():
        loss_before = before.model(ids, labels=ids).loss
        loss_after = tuned.model(ids, labels=ids).loss
    assert loss_after < loss_before  # six steps on these very texts
    assert "bad samples" not in result.stderr + result.stdout  # the chats were read, none refused


def test_export_hf_is_a_causal_lm_transformers_runs_to_our_logits(text_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    result = run_mmllm("export", text_model, "--format", "hf", "--out", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = mmllm.load(text_model)
    messages = [{"role": "user", "content": "Paris is"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    assert ids[0].tolist() == ours.processor.encode_prompt(messages).input_ids
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours.model(ids).logits, rtol=0, atol=1e-5)
