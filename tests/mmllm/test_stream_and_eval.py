"""Command outputs run in this process through `mmllm.cli.main.main`: `--stream` prints exactly what the
command prints without it, and `mmllm eval` reports are checked against metrics recomputed from references."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch
from PIL import Image

from mmllm.cli.main import main

SAMPLED = ["--temperature", "1.0", "--seed", "3", "--max-new-tokens", "8"]


def _stdout(capsys, argv: list[str], stdin: str | None = None, monkeypatch=None) -> str:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["caption", "ask", "chat", "generate"])
def test_stream_prints_the_same_text_as_without_it(command, trained, capsys, monkeypatch, one_thread):
    model = ["--model", str(trained.model)]
    argv, stdin = {
        "caption": ([str(trained.images), "--batch-size", "1"], None),
        "ask": ([str(trained.image), "What colour is the circle?"], None),
        "chat": ([str(trained.image)], "What is here?\nAnd now?\n"),
        "generate": (["a red circle"], None),
    }[command]
    whole = _stdout(capsys, [command, *argv, *model, *SAMPLED], stdin, monkeypatch)
    streamed = _stdout(capsys, [command, *argv, *model, *SAMPLED, "--stream"], stdin, monkeypatch)
    assert streamed == whole
    assert whole.strip()


def _eval(capsys, trained, tmp_path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "report.json"
    printed = _stdout(capsys, ["eval", "--model", str(trained.model), "--out", str(out), *extra])
    return json.loads(out.read_text()), printed


def test_eval_caption_scores_every_image_against_its_references(trained, tmp_path, capsys, one_thread):
    from mmllm.evaluation import caption_scores

    data = trained.data / "val" / "captions"
    report, printed = _eval(capsys, trained, tmp_path, "--data", str(data), "--task", "caption",
                            "--limit", "6", "--batch-size", "4", "--temperature", "1", "--seed", "0")
    assert "BLEU-4" in printed and "CIDEr-D" in printed
    assert report["task"] == "caption" and report["options"]["max_new_tokens"] == 32
    samples = report["samples"]
    assert len(samples) == 6 and all(s["references"] for s in samples)
    recomputed = caption_scores({i: s["references"] for i, s in enumerate(samples)},
                                {i: s["prediction"] for i, s in enumerate(samples)})
    assert report["metrics"] == recomputed.to_dict()
    assert set(report["metrics"]) >= {"bleu4", "cider_d", "exact_match", "count"}


@torch.inference_mode()
def test_eval_text_sums_the_forward_pass_nll_of_every_document(trained, vlm, tmp_path, capsys, one_thread):
    import torch.nn.functional as F

    from data_pipelines.read.eval_samples import text_documents

    (tmp_path / "book.txt").write_text("a red circle above a blue square.\n\nthe green star is left of it.\n\n" * 3)
    assert main(["data", "from-text", str(tmp_path / "book.txt"), "--out", str(tmp_path / "text"),
                 "--doc-chars", "60"]) == 0
    report, printed = _eval(capsys, trained, tmp_path, "--data", str(tmp_path / "text"), "--task", "text")
    assert "perplexity" in printed and "bits per byte" in printed

    documents = text_documents(tmp_path / "text")
    end = vlm.processor.token_ids.end_of_text
    total_nll, total_tokens = 0.0, 0
    for document in documents:  # each fits in max_seq_len: one forward pass per document
        ids = vlm.tokenizer.encode(document, add_special_tokens=False).ids + [end]
        logits = vlm.model(torch.tensor([ids])).logits[0, :-1].double()
        total_nll += float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
        total_tokens += len(ids) - 1
    metrics = report["metrics"]
    assert metrics["count"] == len(documents) > 1
    assert metrics["tokens"] == total_tokens
    assert metrics["bytes"] == sum(len(d.encode()) for d in documents)
    assert metrics["loss"] == pytest.approx(total_nll / total_tokens, rel=1e-5)
    assert metrics["bits_per_byte"] == pytest.approx(total_nll / (torch.log(torch.tensor(2.0)).item()
                                                                  * metrics["bytes"]), rel=1e-5)


def test_eval_blind_answers_every_question_about_a_blank_image(trained, vlm, tmp_path, capsys, one_thread):
    from data_pipelines.read.eval_samples import vqa_questions

    data = trained.data / "val" / "chat"
    report, printed = _eval(capsys, trained, tmp_path, "--data", str(data), "--task", "vqa", "--blind",
                            "--limit", "6", "--temperature", "1", "--seed", "0", "--batch-size", "6",
                            "--turns", "alone")
    assert report["blind"] is True and "blind" in printed
    questions = vqa_questions(data, limit=6)
    size = vlm.config.vision.image_size
    grey = Image.new("RGB", (size, size), (128, 128, 128))  # the normalisation mean 0.5, in 8 bits
    expected = vlm.ask([grey] * 6, [q.question for q in questions], batch_size=6, temperature=1.0, seed=0,
                       max_new_tokens=8)
    assert [s["prediction"] for s in report["samples"]] == expected


def test_eval_vqa_on_multi_turn_chats_reports_in_context_and_alone_answers(trained, vlm, tmp_path, capsys,
                                                                          one_thread):
    from data_pipelines.read.eval_samples import vqa_questions

    data = trained.data / "val" / "chat"  # shapes chats: several questions per conversation
    report, printed = _eval(capsys, trained, tmp_path, "--data", str(data), "--task", "vqa", "--limit", "6",
                            "--batch-size", "4")
    assert report["turns"] == ["in-context", "alone"] and set(report["metrics_by_turns"]) == set(report["turns"])
    assert report["metrics"] == report["metrics_by_turns"]["in-context"]
    assert "accuracy (in-context)" in printed and "accuracy (alone)" in printed
    questions = vqa_questions(data, limit=6)
    assert [q.turn for q in questions[:3]] == [0, 1, 2]
    by_mode = {mode: [s for s in report["samples"] if s["turns"] == mode] for mode in report["turns"]}
    assert [s["turn"] for s in by_mode["in-context"]] == [q.turn for q in questions]
    # Each answer is what the model says one conversation at a time through the Python API.
    for question, sample in zip(questions, by_mode["in-context"]):
        history = question.history + [{"role": "user", "content": question.content}]
        assert sample["prediction"] == vlm.chat(history, images=[question.image], max_new_tokens=8)
    for question, sample in zip(questions, by_mode["alone"]):
        assert sample["prediction"] == vlm.ask(question.image, question.question, max_new_tokens=8)
    alone_only, _ = _eval(capsys, trained, tmp_path, "--data", str(data), "--task", "vqa", "--limit", "6",
                          "--turns", "alone")
    assert alone_only["turns"] == ["alone"] and alone_only["metrics"] == report["metrics_by_turns"]["alone"]


def test_eval_answers_the_same_with_static_cache_decoding(trained, tmp_path, capsys, one_thread):
    data = ["--data", str(trained.data / "val" / "chat"), "--task", "vqa", "--turns", "alone", "--limit", "24",
            "--batch-size", "8"]
    eager, _ = _eval(capsys, trained, tmp_path, *data, "--decode", "eager")
    static, _ = _eval(capsys, trained, tmp_path, *data, "--decode", "static")
    assert [s["prediction"] for s in static["samples"]] == [s["prediction"] for s in eager["samples"]]
    assert len(eager["samples"]) == 24
