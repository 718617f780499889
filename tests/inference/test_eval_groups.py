"""`mmllm eval --group-by` as a user runs it on the trained tiny model: every question in one group, each group
with its interval and blind accuracy, the largest gap; a field no question has exits 2 in one line."""

from __future__ import annotations

import json

from inference_helpers import run_mmllm


def test_eval_group_by_question_type_reports_every_group_with_interval_and_blind(trained, tmp_path):
    out = tmp_path / "groups.json"
    result = run_mmllm("eval", "--model", trained.model, "--data", trained.data / "val" / "chat", "--task", "vqa",
                       "--turns", "alone", "--limit", "40", "--group-by", "question_type", "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    groups = report["groups"]
    assert groups["field"] == "question_type" and groups["turns"] == "alone"
    assert sum(row["count"] for row in groups["groups"]) + groups["questions_without_field"] == 40
    by_type = report["metrics"]["accuracy_per_question_type"]
    for row in groups["groups"]:
        assert row["accuracy"] == by_type[row["group"]]  # the same figure as the per-type metrics
        assert row["ci95"][0] <= row["accuracy"] <= row["ci95"][1] and 0 <= row["blind_accuracy"] <= 1
    assert "largest gap" in result.stdout and "by question_type (alone)" in result.stdout

    bad = run_mmllm("eval", "--model", trained.model, "--data", trained.data / "val" / "chat", "--task", "vqa",
                    "--limit", "4", "--group-by", "no_such_field")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "no question has a field 'no_such_field'" in bad.stderr and "question_type" in bad.stderr
