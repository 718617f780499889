"""Each inference command run as a user runs it: `python -m mmllm.cli.main ...` in a fresh process, on the
tiny model trained by the `trained` fixture; outputs are checked against the Python API in this process."""

from __future__ import annotations

import json

from inference_helpers import run_mmllm

SAMPLED = ("--temperature", "1.0", "--seed", "3", "--max-new-tokens", "8")  # non-empty text from a barely trained model


def test_caption_json_lines_parse_one_per_image_in_folder_order(trained, vlm, one_thread):
    result = run_mmllm("caption", "--model", trained.model, trained.images, "--json", "--batch-size", "2",
                       "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    paths = sorted(str(p) for p in trained.images.glob("*.png"))
    assert [row["image"] for row in rows] == paths
    assert [row["caption"] for row in rows] == vlm.caption(paths, batch_size=2, max_new_tokens=6)


def test_ask_prints_the_answer_of_the_python_api(trained, vlm, one_thread):
    question = "What colour is the circle?"
    result = run_mmllm("ask", "--model", trained.model, trained.image, question, *SAMPLED)
    assert result.returncode == 0, result.stderr
    assert result.stdout == vlm.ask(trained.image, question, temperature=1.0, seed=3, max_new_tokens=8) + "\n"


def test_chat_keeps_history_and_takes_a_new_image_mid_conversation(trained, vlm, one_thread):
    first, second = sorted(trained.images.glob("*.png"))[:2]
    script = f"What is here?\n/image {second}\nAnd in this one?\n/reset\nHello\n/quit\nnever read\n"
    result = run_mmllm("chat", "--model", trained.model, first, *SAMPLED, stdin=script)
    assert result.returncode == 0, result.stderr

    options = dict(temperature=1.0, seed=3, max_new_tokens=8)
    turn1 = {"role": "user", "content": "<image>\nWhat is here?"}
    answer1 = vlm.chat([turn1], [first], **options)
    turn2 = {"role": "user", "content": "<image>\nAnd in this one?"}
    answer2 = vlm.chat([turn1, {"role": "assistant", "content": answer1}, turn2], [first, second], **options)
    answer3 = vlm.chat([{"role": "user", "content": "Hello"}], [], **options)  # after /reset: no history
    assert result.stdout == f"{answer1}\n{answer2}\n{answer3}\n"
    assert "attached" in result.stderr and "reset" in result.stderr


def test_generate_stream_prints_the_whole_continuation(trained, vlm, one_thread):
    result = run_mmllm("generate", "--model", trained.model, "a red circle", "--stream", *SAMPLED)
    assert result.returncode == 0, result.stderr
    assert result.stdout == vlm.generate("a red circle", temperature=1.0, seed=3, max_new_tokens=8) + "\n"


def test_eval_vqa_prints_a_table_and_writes_every_figure(trained, tmp_path):
    out = tmp_path / "report.json"
    result = run_mmllm("eval", "--model", trained.model, "--data", trained.data / "val" / "chat", "--task", "vqa",
                       "--limit", "10", "--batch-size", "4", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "metric" in result.stdout
    assert "10/10" in result.stderr  # progress count
    report = json.loads(out.read_text())
    assert report["task"] == "vqa" and report["blind"] is False
    assert report["model"] == str(trained.model) and report["data"] == str(trained.data / "val" / "chat")
    assert report["options"]["max_new_tokens"] == 8 and report["options"]["batch_size"] == 4
    # shapes chats hold several questions: both turns modes, in-context first, 10 answers each
    assert report["turns"] == ["in-context", "alone"] and len(report["samples"]) == 20
    assert "accuracy (in-context)" in result.stdout and "accuracy (alone)" in result.stdout
    from mmllm.evaluation import vqa_scores

    for mode in report["turns"]:
        samples = [s for s in report["samples"] if s["turns"] == mode]
        metrics = report["metrics_by_turns"][mode]
        assert metrics["count"] == 10 and len(samples) == 10
        assert set(metrics["accuracy_per_question_type"]) == {s["question_type"] for s in samples}
        recomputed = vqa_scores([s["prediction"] for s in samples], [[s["answer"]] for s in samples],
                                [s["question_type"] for s in samples])
        assert metrics == recomputed.to_dict()
    assert report["metrics"] == report["metrics_by_turns"]["in-context"]


def test_the_command_list_of_mmllm_help_gives_each_commands_first_sentence_whole():
    """`mmllm --help` lists each command with its docstring's first sentence, never a line cut mid-sentence."""
    import re

    from mmllm.cli.main import COMMANDS, _command_module, build_parser

    listing = " ".join(build_parser([]).format_help().split())
    for name, target in COMMANDS.items():
        if isinstance(target, dict):
            continue
        doc = " ".join((_command_module(target).__doc__ or "").split("\n\n")[0].split())
        sentence = doc[:re.search(r"[.!?](\s|$)", doc).end()].strip()
        assert f"{name} {sentence}" in listing, name
