"""`mmllm plot`: a run's learning curves and a VQA report's accuracies as PNG files of the expected size."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from mmllm.cli.main import main

pytest.importorskip("matplotlib")


def write_run(run_dir):
    """A CSVLogger-like metrics.csv: per-step training losses and rates, validation every 5 steps."""
    log = run_dir / "logs" / "version_0"
    log.mkdir(parents=True)
    fields = ["step", "train/loss_caption", "train/loss_chat", "val/loss_chat", "val/vqa_accuracy", "lr-AdamW/lm"]
    with open(log / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for step in range(20):
            writer.writerow({"step": step, "train/loss_caption": 3 / (step + 1), "train/loss_chat": 2 / (step + 1),
                             "lr-AdamW/lm": 1e-3})
            if step % 5 == 4:
                writer.writerow({"step": step, "val/loss_chat": 2.5 / (step + 1), "val/vqa_accuracy": step / 20})


def test_plot_of_a_run_writes_its_curves_png(tmp_path, capsys):
    write_run(tmp_path)
    assert main(["plot", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / 'curves.png'}" in capsys.readouterr().out
    with Image.open(tmp_path / "curves.png") as image:
        assert image.size == (1500, 420)  # three panels of 5 x 4.2 inches at 100 dpi


def test_plot_of_a_vqa_report_has_type_bars_and_a_confusion_matrix(tmp_path):
    samples = [{"turns": mode, "turn": 0, "question": "Is it red?", "answer": answer, "question_type": "exists",
                "prediction": prediction} for mode in ("in-context", "alone")
               for answer, prediction in (("yes", "yes"), ("no", "yes"), ("no", "maybe"))]
    metrics = {"accuracy": 1 / 3, "count": 3, "accuracy_per_question_type": {"exists": 1 / 3},
               "count_per_question_type": {"exists": 3}}
    report = {"task": "vqa", "blind": False, "metrics": metrics, "turns": ["in-context", "alone"],
              "metrics_by_turns": {"in-context": metrics, "alone": metrics}, "samples": samples}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert main(["plot", str(path)]) == 0
    with Image.open(tmp_path / "report.png") as image:
        assert image.size == (1300, 500)  # bars beside a confusion matrix (yes/no is a closed set)


def test_plot_of_a_grouped_report_adds_the_groups_panel(tmp_path):
    from mmllm.evaluation.groups import group_report

    samples = [{"turns": "alone", "turn": 0, "question": "Is it red?", "answer": a, "question_type": "exists",
                "prediction": p} for a, p in (("yes", "yes"), ("no", "yes"), ("no", "no"))]
    metrics = {"accuracy": 2 / 3, "count": 3, "accuracy_per_question_type": {"exists": 2 / 3},
               "count_per_question_type": {"exists": 3}}
    groups = {"turns": "alone", **group_report("answer", ["yes", "no", "no"], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0])}
    path = tmp_path / "grouped.json"
    path.write_text(json.dumps({"task": "vqa", "blind": False, "metrics": metrics, "samples": samples,
                                "groups": groups}))
    assert main(["plot", str(path)]) == 0
    with Image.open(tmp_path / "grouped.png") as image:
        assert image.size == (2000, 500)  # type bars, the yes/no confusion matrix, the groups panel


def test_plot_of_something_else_exits_2_with_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    (tmp_path / "caption.json").write_text(json.dumps({"task": "caption", "metrics": {}}))
    assert main(["plot", str(tmp_path / "caption.json")]) == 2
    assert main(["plot", str(tmp_path)]) == 2  # a folder without metrics.csv
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "missing" in errors[0] and "only VQA" in errors[1] and "metrics.csv" in errors[2]


def test_a_fit_shorter_than_its_logging_interval_says_so_instead_of_blaming_the_logger(tmp_path, capsys):
    """3 steps with log_every_n_steps 50 leave the CSV logger's folder without a metrics.csv: the line says why."""
    from types import SimpleNamespace

    from lightning.pytorch.loggers import CSVLogger

    from mmllm.train.callbacks import plot_curves

    trainer = SimpleNamespace(loggers=[CSVLogger(tmp_path, name="logs")], log_every_n_steps=50, global_step=3)
    plot_curves(trainer)
    out = capsys.readouterr().out
    assert "log_every_n_steps (50) is more than the 3 steps trained" in out and "CSVLogger" not in out, out
