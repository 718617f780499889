"""Evaluation reports: one JSON-ready dict per run, and the table `mmllm eval` prints from it.

The dict is the record (written by `--out FILE.json`); the table is rendered from the dict alone, so a
report loaded back from JSON prints the same. Shape:
    {"task": "vqa" | "caption" | "text", "model": str | None, "data": str | None, "blind": bool,
     "mmllm_version": str, "metrics": {...the scores' to_dict()...}, "samples": [...] (only when given)}
A VQA report also names its turns mode(s): "turns": ["in-context", "alone"] and "metrics_by_turns":
{mode: metrics}; "metrics" is then the first mode's. A seq2seq report adds "worst_cases": the 5 samples of lowest
sentence chrF (format_worst_cases prints them).
Fractions stay fractions in the dict (accuracy 0.65); the table shows them as percentages. Non-finite
numbers (the perplexity of a diverged model) become null so the JSON stays strict.
"""

from __future__ import annotations

import math
from typing import Protocol

import mmllm

TASKS = ("vqa", "caption", "text", "seq2seq", "fill-mask")


class Scores(Protocol):
    """VQAScores, CaptionScores or TextScores."""

    def to_dict(self) -> dict: ...


def _finite_or_none(value):
    """JSON-safe copy: inf and nan become None, containers are copied recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def build_report(
    task: str,
    scores: Scores,
    *,
    model: str | None = None,
    data: str | None = None,
    blind: bool = False,
    samples: list[dict] | None = None,
    by_turns: dict[str, Scores] | None = None,
) -> dict:
    """The report of one evaluation run; `samples` holds optional per-item records (prediction, references)."""
    if task not in TASKS:
        raise ValueError(f"unknown evaluation task {task!r}; expected one of {', '.join(TASKS)}")
    report = {
        "task": task,
        "model": model,
        "data": data,
        "blind": blind,
        "mmllm_version": mmllm.__version__,
        "metrics": _finite_or_none(scores.to_dict()),
    }
    if by_turns:
        report["turns"] = list(by_turns)
        report["metrics_by_turns"] = {mode: _finite_or_none(s.to_dict()) for mode, s in by_turns.items()}
    if samples is not None:
        report["samples"] = _finite_or_none(samples)
    return report


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _number(value: float | None, digits: int = 4) -> str:
    return "inf" if value is None else f"{value:.{digits}f}"


def _metric_rows(task: str, metrics: dict) -> list[tuple[str, str, str]]:
    """(metric, value, count) rows of the table for one task."""
    if task == "vqa":
        rows = [("accuracy", _percent(metrics["accuracy"]), str(metrics["count"]))]
        counts = metrics.get("count_per_question_type", {})
        by_prefix = metrics.get("question_types_from") == "prefix"  # VQAv2's opening words: quoted as such
        for question_type, accuracy in metrics.get("accuracy_per_question_type", {}).items():
            label = f'"{question_type} ..."' if by_prefix else question_type
            rows.append((f"  {label}", _percent(accuracy), str(counts.get(question_type, ""))))
        if by_prefix or not metrics.get("accuracy_per_question_type"):  # typed data: its own types say more
            counts = metrics.get("count_per_answer_type", {})
            for kind, accuracy in metrics.get("accuracy_per_answer_type", {}).items():
                rows.append((f"  answer {kind}", _percent(accuracy), str(counts.get(kind, ""))))
        return rows
    if task == "fill-mask":
        count = str(metrics["count"])
        rows = [("top-1 accuracy", _percent(metrics["top1"]), count), ("top-5 accuracy", _percent(metrics["top5"]), count)]
        for word_class, top1 in metrics.get("top1_per_class", {}).items():
            rows.append((f"  {word_class} top-1 / top-5", f"{_percent(top1)} / {_percent(metrics['top5_per_class'][word_class])}",
                         str(metrics["count_per_class"][word_class])))
        return rows
    if task == "caption":
        count = str(metrics["count"])
        rows = [
            ("BLEU-4", _number(metrics["bleu4"]), count),
            ("CIDEr-D", _number(metrics["cider_d"]), count),
            ("exact match", _percent(metrics["exact_match"]), count),
        ]
        for n, bleu in enumerate(metrics.get("bleu_1_to_4", [])[:3], start=1):
            rows.append((f"  BLEU-{n}", _number(bleu), count))
        return rows
    if task == "seq2seq":
        count = str(metrics["count"])
        return [("chrF", _number(metrics["chrf"], 2), count), ("BLEU", _number(metrics["bleu"], 2), count),
                ("ROUGE-L", _number(metrics["rouge_l"]), count),
                ("exact match", _percent(metrics["exact_match"]), count)]
    count = str(metrics["tokens"])
    return [
        ("loss (nats/token)", _number(metrics["loss"]), count),
        ("perplexity", _number(metrics["perplexity"], 3), count),
        ("bits per byte", _number(metrics["bits_per_byte"]), str(metrics["bytes"])),
    ]


def format_table(rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells) -> str:
        first, *rest = cells
        return "  ".join([str(first).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(rest, widths[1:])])

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule] + [line(row) for row in rows])


def format_report(report: dict) -> str:
    """The terminal view of a report: a title line, then metric / value / n (tokens and bytes for text)."""
    details = [f"{name}: {report[name]}" for name in ("model", "data") if report.get(name)]
    if report.get("blind"):
        details.append("blind (every image blank)")
    title = f"mmllm eval {report['task']}" + (f"  ({', '.join(details)})" if details else "")
    by_turns = report.get("metrics_by_turns")
    if by_turns:
        rows = []
        for mode, metrics in by_turns.items():
            mode_rows = _metric_rows(report["task"], metrics)
            rows += [(f"{mode_rows[0][0]} ({mode})", *mode_rows[0][1:]), *mode_rows[1:]]
    else:
        rows = _metric_rows(report["task"], report["metrics"])
    table = format_table(rows, headers=("metric", "value", "n"))
    return f"{title}\n{table}"


def format_worst_cases(report: dict) -> str:
    """seq2seq: the samples of report["worst_cases"], lowest sentence chrF first, source, reference, prediction."""
    lines = [f"worst {len(report['worst_cases'])} by sentence chrF"]
    for case in report["worst_cases"]:
        lines += [f"- chrF {case['chrf']:.1f}  ROUGE-L {case['rouge_l']:.3f}  ({case['key']})",
                  f"  source:     {case['source']}", f"  reference:  {case['reference']}",
                  f"  prediction: {case['prediction']}"]
    return "\n".join(lines)


def format_groups(groups: dict) -> str:
    """The --group-by table: group, n, accuracy, 95% interval, blind; then the largest gap."""
    has_blind = any("blind_accuracy" in row for row in groups["groups"])
    rows = []
    for row in groups["groups"]:
        low, high = row["ci95"]
        cells = (row["group"], str(row["count"]), _percent(row["accuracy"]), f"{100 * low:.1f}-{100 * high:.1f}%")
        rows.append(cells + ((_percent(row.get("blind_accuracy")),) if has_blind else ()))
    headers = (groups["field"], "n", "accuracy", "95% interval") + (("blind",) if has_blind else ())
    text = f"by {groups['field']} ({groups['turns']})\n" + format_table(rows, headers=headers)
    gap = groups.get("largest_gap")
    if gap:
        verdict = "significant" if gap["significant"] else "not significant"
        text += (f"\nlargest gap: {gap['best']} - {gap['worst']} = {100 * gap['gap']:.1f} points, p = {gap['p_value']:.3g} "
                 f"({gap.get('test', 'z-test')}, Bonferroni over {gap['pairs']} pairs): {verdict} at 5%")
    small = groups.get("groups_below_min_size") or []
    if small:
        names = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
        text += (f"\n{len(small)} group(s) under {groups['min_group_size']} questions left out of the gap test: "
                 f"{names}")
    return text


def format_counterfactual(counterfactual: dict) -> str:
    """The --counterfactual table: per case, rewrites, how often the answer changed (interval), accuracy after."""
    sources = ", ".join(f"{name} {n}" for name, n in counterfactual["sources"].items()) or "none"
    rows = []
    for case, row in counterfactual["cases"].items():
        interval = "" if row["changed_ci95"] is None else "{:.1f}-{:.1f}%".format(*(100 * v for v in row["changed_ci95"]))
        rows.append((case, str(row["count"]), _percent(row["changed"]), interval, _percent(row["accuracy"])))
    head = (f"counterfactual ({counterfactual['turns']}): {counterfactual['rewrites']} rewrites of "
            f"{counterfactual['questions_rewritten']} questions; answers known from: {sources}\n")
    return head + format_table(rows, headers=("case", "n", "answer changed", "95% interval", "right after"))
