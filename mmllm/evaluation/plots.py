"""Pictures of a training run (from its CSV log) and of an eval report, as PNG files (matplotlib, an optional extra).

A run: one figure of three panels, training and validation loss per data kind, the learning rate of each
parameter group, and the VQA accuracy measured during training. A VQA report: accuracy per question type for
each turns mode, and a confusion matrix of the answers when the gold answers form a small closed set.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

MAX_GROUPS = 30  # groups drawn by --group-by's panel, the largest first
MAX_CLASSES = 24  # a confusion matrix only for answer sets this small (colours, yes/no, counts...)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'mmllm[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of every CSVLogger metrics.csv under run_dir, versions in order (a resumed run continues)."""
    files = sorted(Path(run_dir).glob("**/metrics.csv"), key=lambda p: (str(p.parent.parent), _version(p)))
    if not files:
        raise FileNotFoundError(f"no metrics.csv under {run_dir} (was the run logged with a CSVLogger?)")
    rows = []
    for path in files:
        with open(path, newline="") as handle:
            rows += list(csv.DictReader(handle))
    return rows


def _version(path: Path) -> int:
    name = path.parent.name
    return int(name.split("_")[-1]) if name.split("_")[-1].isdigit() else 0


def series(rows: list[dict[str, str]], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, in step order."""
    points = sorted((int(float(row["step"])), float(row[name])) for row in rows if row.get(name))
    return [step for step, _ in points], [value for _, value in points]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """run_dir/curves.png (or out): loss per data kind, learning rates, VQA accuracy against steps."""
    plt = _pyplot()
    rows = read_metrics(run_dir)
    names = sorted({key for row in rows for key, value in row.items() if value})
    figure, (losses, rates, accuracy) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in names:
        if name.startswith(("train/loss_", "val/loss_")) and not name.endswith(("_epoch", "_step")):
            steps, values = series(rows, name)
            style = "-" if name.startswith("train") else "o-"
            losses.plot(steps, values, style, label=name, linewidth=1, markersize=3)
    losses.set(title="loss per data kind", xlabel="step", ylabel="loss (nats/token)", yscale="log")
    for name in (n for n in names if n.startswith("lr-")):
        rates.plot(*series(rows, name), label=name.split("/", 1)[-1], linewidth=1)
    rates.set(title="learning rate", xlabel="step")
    steps, values = series(rows, "val/vqa_accuracy")
    accuracy.plot(steps, [100 * v for v in values], "o-", color="tab:green")
    accuracy.set(title="VQA accuracy during training", xlabel="step", ylabel="%", ylim=(0, 100))
    for axes in (losses, rates):
        if axes.lines:
            axes.legend(fontsize=7)
    for axes in (losses, rates, accuracy):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def plot_report(report_path: str | Path, out: str | Path | None = None) -> Path:
    """A VQA report's picture (REPORT.png beside it, or out): accuracy per question type for each turns mode,
    the confusion matrix of gold and predicted answers when there are at most MAX_CLASSES gold answers, and for a
    report of `--group-by` the accuracy of its MAX_GROUPS largest groups with their 95% intervals and blind scores."""
    plt = _pyplot()
    report = json.loads(Path(report_path).read_text())
    if report.get("task") != "vqa":
        raise ValueError(f"{report_path}: only VQA reports have per-type accuracies and answers to plot")
    by_turns = report.get("metrics_by_turns") or {"alone": report["metrics"]}
    samples = report.get("samples", [])
    mode = next(iter(by_turns))
    gold = [s["answer"].strip().lower() for s in samples if s.get("turns", mode) == mode]
    predicted = [s["prediction"].strip().lower() for s in samples if s.get("turns", mode) == mode]
    classes = sorted(set(gold))
    with_matrix = 1 < len(classes) <= MAX_CLASSES
    groups = report.get("groups")
    widths = [6] + ([7] if with_matrix else []) + ([7] if groups else [])
    figure, axes = plt.subplots(1, len(widths), figsize=(sum(widths), 5), squeeze=False,
                                gridspec_kw={"width_ratios": widths})
    bars = axes[0][0]
    types = sorted({t for metrics in by_turns.values() for t in metrics.get("accuracy_per_question_type", {})})
    labels = types or ["all"]
    width = 0.8 / len(by_turns)
    for index, (turns, metrics) in enumerate(by_turns.items()):
        values = [metrics["accuracy_per_question_type"].get(t, 0) for t in types] if types else [metrics["accuracy"]]
        bars.bar([i + index * width for i in range(len(labels))], [100 * v for v in values], width,
                 label=f"{turns} ({100 * metrics['accuracy']:.1f}% overall)")
    bars.set_xticks([i + width * (len(by_turns) - 1) / 2 for i in range(len(labels))], labels, rotation=30)
    bars.set(title="accuracy per question type" + (" (blind)" if report.get("blind") else ""), ylabel="%",
             ylim=(0, 100))
    bars.legend(fontsize=8)
    if with_matrix:
        columns = classes + ["(other)"]
        counts = Counter((g, p if p in classes else "(other)") for g, p in zip(gold, predicted))
        matrix = [[counts[(g, p)] for p in columns] for g in classes]
        cells = axes[0][1]
        cells.imshow(matrix, cmap="Blues")
        cells.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
        cells.set_yticks(range(len(classes)), classes, fontsize=7)
        cells.set(title=f"answers ({mode}): gold rows, predicted columns", xlabel="predicted", ylabel="gold")
    if groups:
        _plot_groups(axes[0][-1], groups)
    figure.tight_layout()
    out = Path(out) if out else Path(report_path).with_suffix(".png")
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def _plot_groups(axis, groups: dict) -> None:
    """Accuracy per group (the largest MAX_GROUPS) with 95% interval bars, and the blind accuracy as a marker."""
    rows = groups["groups"][:MAX_GROUPS]
    x = range(len(rows))
    accuracy = [100 * r["accuracy"] for r in rows]
    below = [100 * (r["accuracy"] - r["ci95"][0]) for r in rows]
    above = [100 * (r["ci95"][1] - r["accuracy"]) for r in rows]
    axis.bar(x, accuracy, yerr=[below, above], capsize=2, label="accuracy, 95% interval")
    if all("blind_accuracy" in r for r in rows):
        axis.scatter(x, [100 * r["blind_accuracy"] for r in rows], color="crimson", marker="_", s=120, zorder=3,
                     label="blind")
    axis.set_xticks(list(x), [f"{r['group']} ({r['count']})" for r in rows], rotation=90, fontsize=7)
    gap = groups.get("largest_gap")
    title = f"accuracy by {groups['field']}"
    if gap:
        title += f"; gap {100 * gap['gap']:.0f} pts, p = {gap['p_value']:.2g}"
    axis.set(title=title, ylabel="%", ylim=(0, 105))
    axis.legend(fontsize=8)
