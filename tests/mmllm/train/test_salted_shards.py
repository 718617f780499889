"""Every command that reads shards, over img2dataset and LLaVA shards salted with broken samples: each finishes,
skips the bad samples and prints their counts by reason, through the one reader of data_pipelines.read.shards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from fit_helpers import SUBPROCESS_ENV, fit_config, run_mmllm, write_config
from salted_shards import ODD_IMAGES, image_bytes, write_salted_captions, write_salted_chats
from shard_fixtures import huge_png_header

from commands import REPO

pytestmark = pytest.mark.slow


def counts_line(output: str, prefix: str = "") -> str:
    """The 'skipped N bad samples: reason n, ...' line a command printed (the last one starting with prefix)."""
    lines = [line for line in output.splitlines() if "bad samples:" in line and line.startswith(prefix)]
    assert lines, output[-3000:]
    return lines[-1]


def reasons(line: str) -> dict[str, int]:
    listed = line.split("bad samples:", 1)[1]
    return {item.rsplit(" ", 1)[0].strip(): int(item.rsplit(" ", 1)[1]) for item in listed.split(",")}


@pytest.fixture(scope="module")
def salted(tmp_path_factory):
    root = tmp_path_factory.mktemp("salted")
    usable_captions, caption_reasons = write_salted_captions(root / "captions")
    usable_chats, chat_reasons = write_salted_chats(root / "chat")
    return root, (usable_captions, caption_reasons), (usable_chats, chat_reasons)


@pytest.fixture(scope="module")
def salted_run(salted, shapes_data, tmp_path_factory):
    """The tokenizer and a 4-step fit trained on the salted shards alone."""
    root, _, _ = salted
    tokenizer = run_mmllm("tokenizer", "train", "--data", root / "captions", root / "chat", "--vocab-size", "300",
                          "--out", root / "tokenizer.json", cwd=root)
    run_dir = tmp_path_factory.mktemp("salted-run")
    config = fit_config(shapes_data, run_dir, trainer={"max_steps": 4, "val_check_interval": 4})
    config["data"].update(tokenizer=str(root / "tokenizer.json"), batch_size=4,
                          sources=[{"kind": "caption", "path": str(root / "captions")},
                                   {"kind": "chat", "path": str(root / "chat")}],
                          val_sources=[{"kind": "chat", "path": str(root / "chat")}])
    config_file = write_config(config, run_dir / "config.yaml")
    fit = run_mmllm("fit", "--config", config_file, cwd=run_dir)
    return tokenizer, fit, run_dir, config_file


def test_tokenizer_training_skips_and_counts_what_it_cannot_read(salted, salted_run):
    tokenizer, _, _, _ = salted_run
    assert tokenizer.returncode == 0, tokenizer.stderr[-3000:]
    counted = reasons(counts_line(tokenizer.stdout + tokenizer.stderr))
    # Text is all the tokenizer reads: images are not decoded, so only text and tar problems count.
    assert counted == {"non-utf8 text": 1, "invalid json": 2, "duplicate key": 1, "truncated tar member": 1}


def test_fit_trains_through_bad_samples_and_reports_them(salted_run):
    _, fit, run_dir, _ = salted_run
    assert fit.returncode == 0, fit.stderr[-3000:]
    line = counts_line(fit.stdout + fit.stderr, "training data: skipped")
    assert {"corrupt image", "invalid json", "missing image"} <= set(reasons(line))
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_validate_reads_the_salted_validation_shards(salted_run):
    _, _, run_dir, config_file = salted_run
    result = run_mmllm("validate", "--config", config_file, "--ckpt_path", run_dir / "checkpoints" / "last.ckpt",
                       cwd=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert counts_line(result.stdout + result.stderr, "validation data: skipped")


def test_eval_scores_the_usable_samples_and_counts_the_rest(salted, salted_run):
    root, (usable_captions, caption_reasons), (usable_chats, chat_reasons) = salted
    _, _, run_dir, _ = salted_run
    for task, folder, usable, expected in (("caption", "captions", usable_captions, caption_reasons),
                                           ("vqa", "chat", usable_chats, None)):
        out = root / f"eval-{task}.json"
        result = run_mmllm("eval", "--model", run_dir / "model", "--data", root / folder, "--task", task,
                           "--max-new-tokens", "2", "--out", out)
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(out.read_text())
        if expected is not None:
            assert report["skipped_samples"] == dict(expected)
            assert len(report["samples"]) == usable
        else:  # the chat without an answer gives no question, so it is not a bad sample for VQA
            assert report["skipped_samples"] == {"invalid json": 2, "invalid conversation": 1, "missing image": 1,
                                                 "missing conversation": 1}
        assert reasons(counts_line(result.stderr)) == report["skipped_samples"]


def test_the_dataloader_benchmark_reads_salted_shards(salted, salted_run):
    root, (_, caption_reasons), _ = salted
    result = subprocess.run([sys.executable, str(REPO / "bench" / "dataloader.py"), "--data", str(root / "captions"),
                             "--kind", "caption", "--tokenizer", str(root / "tokenizer.json")],
                            capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report["skipped_samples"]) == set(caption_reasons)


def test_converters_skip_unreadable_images_and_keep_odd_ones(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    good = image_bytes("RGB", "JPEG")
    files = {"good.jpg": good, "corrupt.jpg": b"\xff\xd8\xff\xe0" + b"x" * 50, "truncated.jpg": good[: len(good) // 2],
             "empty.png": b"", "bomb.png": huge_png_header(30000, 30000)}
    files.update({f"{name}.{ext}": image_bytes(mode, fmt) for name, (mode, fmt, ext) in ODD_IMAGES.items()})
    for name, data in files.items():
        (images / name).write_bytes(data)
    rows = [{"file": name, "caption": f"picture {name}"} for name in files] + [{"file": "gone.jpg", "caption": "x"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    result = run_mmllm("data", "from-folder", images, "--captions", tmp_path / "captions.jsonl",
                       "--out", tmp_path / "shards", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "wrote 5 samples" in output  # good + the four odd images
    assert "corrupt image 3" in output and "image too large 1" in output and "missing image 1" in output
    llava = [{"id": i, "image": name, "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                        {"from": "gpt", "value": "A picture."}]}
             for i, name in enumerate(files)]
    (tmp_path / "llava.json").write_text(json.dumps(llava))
    result = run_mmllm("data", "from-llava", tmp_path / "llava.json", "--images", images, "--out", tmp_path / "chat",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote 5 samples" in result.stdout + result.stderr
    shutil.rmtree(images)


def test_a_shard_that_is_not_a_tar_stops_every_command_with_one_line_naming_it(salted_run, tmp_path, capsys,
                                                                               monkeypatch):
    from mmllm.cli.main import main

    _, _, run_dir, config_file = salted_run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "00000.tar").write_text("this is not a tar file, only its name says so\n" * 20)
    named = str(bad / "00000.tar")
    monkeypatch.chdir(run_dir)

    def status(*args) -> int:  # in this process: LightningCLI leaves with SystemExit, the other commands return
        try:
            return main([str(arg) for arg in args])
        except SystemExit as stop:
            return stop.code

    commands = {
        "tokenizer": ("tokenizer", "train", "--data", bad, "--vocab-size", "300", "--out", tmp_path / "t.json"),
        "eval": ("eval", "--model", run_dir / "model", "--data", bad, "--task", "caption"),
        "fit": ("fit", "--config", config_file, "--data.sources", f"[{{kind: caption, path: {bad}}}]",
                "--checkpoint.dirpath", tmp_path / "checkpoints"),
    }
    for command, args in commands.items():
        code = status(*args)
        stderr = capsys.readouterr().err
        errors = [line for line in stderr.splitlines() if "error:" in line]
        assert code == 2, (command, stderr[-2000:])
        assert len(errors) == 1 and named in errors[0] and "not a tar file" in errors[0], (command, stderr)
        assert "Traceback" not in stderr
