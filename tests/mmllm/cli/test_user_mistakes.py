"""A user's mistake on the inference and evaluation commands exits with status 2 and one line on stderr that
names the problem, never a traceback. Run through `mmllm.cli.main.main` in this process (an exception that
escaped would fail the test), plus fresh processes for the cases most likely to leak a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image


@pytest.fixture
def files(tmp_path, model_folder):
    """Paths a test can name: a good image, a text file named .png, an empty folder, broken models."""
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good)
    (tmp_path / "notes.png").write_text("these are not pixels")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    for missing in ("tokenizer.json", "model.safetensors", "config.json"):
        broken = tmp_path / f"no-{missing}"
        shutil.copytree(model_folder, broken)
        (broken / missing).unlink()
    torch.save({"state_dict": {}, "mmllm_config": {}}, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    torch.save({"epoch": 3}, tmp_path / "foreign.ckpt")
    (tmp_path / "half.safetensors").write_bytes((model_folder / "model.safetensors").read_bytes()[:1000])
    corrupt = tmp_path / "corrupt-weights"
    shutil.copytree(model_folder, corrupt)
    (corrupt / "model.safetensors").write_bytes((model_folder / "model.safetensors").read_bytes()[:1000])
    return tmp_path


LONG = "why " * 1000
# (command line with {model}, {dir} and {long} placeholders, a phrase the one line must contain)
MISTAKES = [
    ("caption --model {model} {dir}/missing.png", "missing.png does not exist"),
    ("caption --model {model} {dir}/notes.png", "notes.png: not a readable image"),
    ("caption --model {model} {dir}/empty", "holds no images"),
    ("caption --model {model} {dir}/*.jpg", "no file matches"),
    ("caption --model {model} {dir}/good.png --batch-size 0", "--batch-size must be at least 1"),
    ("caption --model {model} {dir}/good.png --json --stream", "do not mix"),
    ("ask --model {model} {dir}/notes.png What?", "not a readable image"),
    ("ask --model {model} {dir}/empty What?", "is a folder, not an image"),
    ("ask --model {dir}/nowhere {dir}/good.png What?", "does not exist"),
    ("ask --model {dir}/no-tokenizer.json {dir}/good.png What?", "tokenizer.json not found"),
    ("ask --model {dir}/no-model.safetensors {dir}/good.png What?", "model.safetensors not found"),
    ("ask --model {dir}/no-config.json {dir}/good.png What?", "is not a model folder"),
    ("ask --model {dir}/corrupt-weights {dir}/good.png What?", "not a readable safetensors file"),
    ("ask --model {dir}/truncated.ckpt {dir}/good.png What?", "corrupt or truncated"),
    ("ask --model {dir}/foreign.ckpt {dir}/good.png What?", "not an mmllm training checkpoint"),
    ("ask --model {dir}/whole.ckpt {dir}/good.png What?", "does not hold a usable model"),
    ("ask --model {dir}/good.png {dir}/good.png What?", "corrupt or truncated"),
    ("ask --model {model} {dir}/good.png {long}", "leaving no room for an answer"),
    ("ask --model {model} {dir}/good.png What? --top-p 1.5", "top_p must be in (0, 1]"),
    ("generate --model {model} {long}", "leaving no room for an answer"),
    ("chat --model {model} {dir}/missing.png", "missing.png does not exist"),
    ("eval --model {model} --data {dir}/nowhere --task vqa", "does not exist"),
    ("eval --model {model} --data {dir}/empty --task vqa", "no .tar shards"),
    ("eval --model {model} --data {dir}/empty --task text --blind", "--blind applies to vqa and caption"),
    ("eval --model {model} --data {dir}/empty --task vqa --limit 0", "--limit must be at least 1"),
]


def _argv(template: str, files, model_folder) -> list[str]:
    words = template.split(" ")
    return [LONG if w == "{long}" else w.replace("{model}", str(model_folder)).replace("{dir}", str(files))
            for w in words]


@pytest.mark.parametrize("template, message", MISTAKES, ids=[m[0].split(" --")[0] + " | " + m[1] for m in MISTAKES])
def test_mistake_exits_2_with_one_line(template, message, files, model_folder, capsys):
    from mmllm.cli.main import main

    argv = _argv(template, files, model_folder)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmllm: error: "), err
    assert message in err


@pytest.mark.parametrize("argv, message", [
    (["ask", "picture.png", "What is it?"], "the following arguments are required: --model"),
    (["eval", "--model", "m", "--data", "d"], "the following arguments are required: --task"),
    (["caption", "--model", "m", "a.png", "--dtype", "float8"], "invalid choice"),
])
def test_argument_mistake_exits_2_with_one_line(argv, message, capsys):
    from mmllm.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the mistake is asking for CUDA where there is none")
def test_cuda_without_a_gpu_exits_2(files, model_folder, capsys):
    from mmllm.cli.main import main

    assert main(["ask", "--model", str(model_folder), str(files / "good.png"), "What?", "--device", "cuda"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_chat_reports_a_bad_line_and_goes_on(files, model_folder, capsys, monkeypatch):
    import io

    from mmllm.cli.main import main

    script = f"/image {files}/notes.png\nWhy <image> here?\n{LONG}\n/image {files}/good.png\nWhat is it?\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert main(["chat", "--model", str(model_folder), "--max-new-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    assert "not a readable image" in err and "by attaching an image with /image" in err and "does not fit" in err
    assert out.count("\n") == 1  # only the last question was answered
    assert "Traceback" not in err


@pytest.mark.parametrize("template, message", [
    ("ask --model {dir}/truncated.ckpt {dir}/good.png What?", "corrupt or truncated"),
    ("caption --model {model} {dir}/notes.png", "not a readable image"),
])
def test_mistake_in_a_fresh_process_prints_no_traceback(template, message, files, model_folder):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "mmllm.cli.main", *_argv(template, files, model_folder)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_caption_captions_every_readable_image_and_names_the_unreadable(files, model_folder, capsys):
    """One broken image among good ones: the good ones are captioned, the broken one is named on one line at the
    end, and the status is 2 so a script notices."""
    from mmllm.cli.main import main

    shutil.copy(files / "good.png", files / "also-good.png")
    images = [str(files / "good.png"), str(files / "notes.png"), str(files / "also-good.png")]
    assert main(["caption", "--model", str(model_folder), *images, "--max-new-tokens", "2", "--json"]) == 2
    out, err = capsys.readouterr()
    assert [json.loads(line)["image"] for line in out.splitlines()] == [images[0], images[2]]
    assert err.count("\n") == 1 and "notes.png" in err and "1 of 3 images" in err, err
    assert "good.png" not in err
