"""The README's first command on a clean clone, timed, with the demo's figures in one JSON report.

    python bench/demo_run.py --out bench/results/DATE-demo-clean-clone.json
    python bench/demo_run.py --cold-compile --out ...   # compiled blocks compile as on a machine that never ran mmllm

Clones this repository's HEAD (committed files only) into a temporary folder, runs the first command of the README's
"The two commands" exactly as written there, and reads back what a user sees: the training steps the budget bought
(the fit's progress lines), the stages' wall times, and the demo's evaluation reports (runs/eval-*.json): VQA
accuracy per split and per question type, with the blind model beside it, and the captions' exact match. Nothing else
may run on the machine meanwhile: the demo trains for a fixed time, so its step count is the speed measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import bench_common as common  # noqa: E402


def first_command(readme: str) -> str:
    """The first ```bash block under "## The two commands"."""
    section = readme.split("## The two commands", 1)[1]
    match = re.search(r"```bash\n(.+?)\n```", section, re.S)
    if match is None:
        raise SystemExit("README.md: no bash block under 'The two commands'")
    return match.group(1).strip()


def vqa_figures(report: dict) -> dict:
    """{turns mode: {accuracy, per question type}} of one `mmllm eval --task vqa` report."""
    by_turns = report.get("metrics_by_turns") or {"alone": report["metrics"]}
    return {mode: {"accuracy": m["accuracy"], "per_question_type": m.get("accuracy_per_question_type", {}),
                   "questions": m.get("count")} for mode, m in by_turns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--keep", type=Path, help="clone into this folder and keep it (default: a temporary one)")
    parser.add_argument("--cold-compile", action="store_true",
                        help="an empty MMLLM_CACHE_DIR: compiled code is made afresh, as on a new machine")
    args = parser.parse_args()

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    clone = args.keep or Path(tempfile.mkdtemp(prefix="mmllm-demo-")) / "mmllm"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    command = first_command((clone / "README.md").read_text())
    env = dict(os.environ)
    if args.cold_compile:
        env["MMLLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmllm-cache-")
    env.pop("VIRTUAL_ENV", None)
    env["PYTHONUNBUFFERED"] = "1"  # each progress line as it happens: the stage times below are read from them

    marks: dict[str, float] = {}
    steps: list[int] = []
    lines: list[str] = []
    start = time.perf_counter()
    with subprocess.Popen(["bash", "-c", command], cwd=clone, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as run:
        for line in run.stdout:
            sys.stdout.write(line)
            lines.append(line.rstrip("\n"))
            now = time.perf_counter() - start
            if line.startswith("$ mmllm "):  # the demo echoes each command it runs
                marks.setdefault(line.split()[2], now)
            match = re.match(r"step (\d+)/", line) or re.match(r"exported weights at step (\d+)", line)
            if match:
                steps.append(int(match.group(1)))
                marks.setdefault("first_step", now)
                marks["last_step"] = now
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"the first command exited {run.returncode}")

    runs = clone / "runs"
    evals = {path.stem.removeprefix("eval-"): json.loads(path.read_text()) for path in sorted(runs.glob("eval-*.json"))}
    report = {
        "bench": "demo_run", "commit": commit, "command": command, "cold_compile": args.cold_compile,
        "machine": common.machine(__import__("torch").device("cpu")),
        "wall_s": wall,
        "setup_s": marks.get("data", wall),  # venv and pip, until the demo's first command
        "training_steps": max(steps) if steps else 0,
        "first_step_at_s": marks.get("first_step"),
        "fit_progress_s": (marks["last_step"] - marks["first_step"]) if steps else None,
        "vqa": {name: vqa_figures(r) for name, r in evals.items() if r.get("task") == "vqa" or "metrics_by_turns" in r},
        "caption_exact_match_val": evals.get("val-captions", {}).get("metrics", {}).get("exact_match"),
        "summary": lines[next((i for i, l in enumerate(lines) if l.startswith("== demo summary")), len(lines)):],
    }
    common.write_report(report, args.out)


if __name__ == "__main__":
    main()
