"""`mmllm eval --group-by` as a user runs it on the trained tiny model: every question in one group, each group
with its interval and blind accuracy, the largest gap; a field no question has exits 2 in one line."""

from __future__ import annotations

import json

from mmllm.cli.main import main


def test_eval_group_by_question_type_reports_every_group_with_interval_and_blind(trained, tmp_path, capsys):
    out = tmp_path / "groups.json"
    assert main(["eval", "--model", str(trained.model), "--data", str(trained.data / "val" / "chat"), "--task", "vqa",
                 "--turns", "alone", "--limit", "40", "--group-by", "question_type", "--min-group-size", "3",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    groups = report["groups"]
    assert groups["field"] == "question_type" and groups["turns"] == "alone"
    assert sum(row["count"] for row in groups["groups"]) + groups["questions_without_field"] == 40
    by_type = report["metrics"]["accuracy_per_question_type"]
    for row in groups["groups"]:
        assert row["accuracy"] == by_type[row["group"]]  # the same figure as the per-type metrics
        assert row["ci95"][0] <= row["accuracy"] <= row["ci95"][1] and 0 <= row["blind_accuracy"] <= 1
    assert "largest gap" in printed and "by question_type (alone)" in printed
    small = [row["group"] for row in groups["groups"] if row["count"] < 3]
    assert groups["groups_below_min_size"] == small and groups["min_group_size"] == 3
    assert all(name not in (groups["largest_gap"]["best"], groups["largest_gap"]["worst"]) for name in small)

    assert main(["eval", "--model", str(trained.model), "--data", str(trained.data / "val" / "chat"), "--task", "vqa",
                 "--limit", "4", "--group-by", "no_such_field"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1, errors
    assert "no question has a field 'no_such_field'" in errors[0] and "question_type" in errors[0]


def test_eval_counterfactual_asks_rewritten_questions_and_knows_their_answers_from_the_scene(trained, tmp_path, capsys):
    from data_pipelines.read.eval_samples import vqa_questions
    from data_pipelines.convert.shapes import answer_from_objects

    data = str(trained.data / "val" / "chat")
    out = tmp_path / "counterfactual.json"
    assert main(["eval", "--model", str(trained.model), "--data", data, "--task", "vqa", "--turns", "alone",
                 "--limit", "40", "--counterfactual", "red=blue,green;left=right", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())["counterfactual"]
    questions = vqa_questions(data, limit=40)
    records = report["records"]
    assert report["rewrites"] == len(records) > 0 and report["turns"] == "alone"
    assert sum(case["count"] for case in report["cases"].values()) == len(records)
    predictions = {(s["key"], s["turn"]): s["prediction"] for s in json.loads(out.read_text())["samples"]}
    for record in records:
        question = questions[record["index"]]
        word, alternative = record["swap"].split("->")
        assert word in question.question and alternative in record["rewritten"]
        assert record["expected"] == answer_from_objects(question.fields["objects"], record["rewritten"])
        assert record["prediction"] == predictions[(question.key, question.turn)]
    assert report["sources"].get("scene", 0) == sum(r["expected"] is not None for r in records)
    assert "should change" in printed and "should not change" in printed

    for spec, message in (("red", "expected WORD=ALTERNATIVE"), ("zebra=horse", "no question names 'zebra'")):
        assert main(["eval", "--model", str(trained.model), "--data", data, "--task", "vqa", "--limit", "4",
                     "--counterfactual", spec]) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert message in errors[-1], errors
