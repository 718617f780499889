"""Evaluation reports: strict JSON, the table reads the same from the dict and from its JSON round trip."""

import json

import pytest

from mmllm.evaluation.caption_metrics import CaptionScores
from mmllm.evaluation.report import build_report, format_report, format_table
from mmllm.evaluation.text_metrics import text_scores
from mmllm.evaluation.vqa_metric import vqa_scores


def _vqa_report(**kwargs):
    scores = vqa_scores(["yes", "2", "red"], [["yes"], ["two"], ["blue"]], ["is the", "how many", "what color"])
    return build_report("vqa", scores, model="runs/tiny", data="data/shapes/test/chat", **kwargs)


def test_vqa_report_holds_metrics_and_run_details():
    report = _vqa_report(blind=True, samples=[{"prediction": "yes", "references": ["yes"], "accuracy": 1.0}])
    assert report["task"] == "vqa" and report["blind"] is True and report["model"] == "runs/tiny"
    assert report["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert report["metrics"]["accuracy_per_question_type"]["what color"] == 0.0
    assert report["samples"][0]["accuracy"] == 1.0


def test_vqa_table_shows_percentages_per_question_type_and_blind_flag():
    table = format_report(_vqa_report(blind=True))
    lines = table.splitlines()
    assert lines[0] == "mmllm eval vqa  (model: runs/tiny, data: data/shapes/test/chat, blind (every image blank))"
    assert lines[1].split() == ["metric", "value", "n"]
    assert lines[3].split() == ["accuracy", "66.67%", "3"]
    assert ["how", "many", "100.00%", "1"] in [line.split() for line in lines]
    assert ["what", "color", "0.00%", "1"] in [line.split() for line in lines]


def test_report_is_strict_json_and_table_survives_round_trip():
    diverged = text_scores(total_nll=1e6, total_tokens=1, total_bytes=4)
    for report in [_vqa_report(), build_report("text", diverged)]:
        text = json.dumps(report, allow_nan=False)
        assert format_report(json.loads(text)) == format_report(report)
    diverged_report = build_report("text", diverged)
    assert diverged_report["metrics"]["perplexity"] is None
    assert ["perplexity", "inf", "1"] in [line.split() for line in format_report(diverged_report).splitlines()]


def test_caption_and_text_tables_list_their_metrics():
    caption = CaptionScores(bleu=[0.5, 0.4, 0.3, 0.25], cider_d=1.234, exact_match=0.1, count=20)
    caption_table = format_report(build_report("caption", caption))
    assert ["BLEU-4", "0.2500", "20"] in [line.split() for line in caption_table.splitlines()]
    assert ["CIDEr-D", "1.2340", "20"] in [line.split() for line in caption_table.splitlines()]
    assert ["exact", "match", "10.00%", "20"] in [line.split() for line in caption_table.splitlines()]
    text_table = format_report(build_report("text", text_scores(8 * 0.6931471805599453, 4, 8)))
    assert ["perplexity", "4.000", "4"] in [line.split() for line in text_table.splitlines()]
    assert ["bits", "per", "byte", "1.0000", "8"] in [line.split() for line in text_table.splitlines()]


def test_table_columns_line_up():
    table = format_table([("a", "1.0", "3"), ("longer name", "10.25", "1000")], headers=("metric", "value", "n"))
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].startswith("a ") and lines[2].endswith("   3")


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="unknown evaluation task"):
        build_report("retrieval", text_scores(1.0, 1, 1))


def test_a_report_of_untyped_questions_lists_vqav2_breakdowns():
    from mmllm.evaluation.report import build_report, format_report

    scores = vqa_scores(["yes", "2"], [["yes"], ["3"]], questions=["Is there a dog?", "How many cats?"])
    text = format_report(build_report("vqa", scores))
    assert '"how many ..."' in text and '"is there a ..."' in text
    assert "answer yes/no" in text and "answer number" in text
