"""Learning curves of training recipes: VQA accuracy and validation losses against steps and minutes; prints JSON.

    python bench/learning_curves.py --data data/shapes --recipes adamw muon --steps 680
    python bench/learning_curves.py --data data/shapes --recipe 'wide=--model.lm {dim: 256}' --parallel 4

Each recipe is `mmllm fit --config configs/shapes-tiny.yaml` plus its overrides, run as a subprocess with its own
run folder under --work. Validation runs every --eval-every steps on the val chats and captions, and answers
--questions val questions by generation (`val/vqa_accuracy`). From each run's CSV log the script reports the
curve, the first step (and the wall/CPU minutes) at which VQA accuracy reached each of --thresholds, and the
best figures. --parallel runs several recipes at once (a GPU machine with many cores); on 2 CPU cores run
one at a time, or the minutes mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mmllm.evaluation.plots import read_metrics  # noqa: E402  (the CSV log reader `mmllm plot` uses)

# Named recipes: overrides of configs/shapes-tiny.yaml. `adamw` is the recipe of 2026-11-28, `muon` the same with
# Muon; the others are the levers measured for issue 10.
RECIPES: dict[str, list[str]] = {
    "adamw": ["--model.optimizer", "adamw", "--model.lr", "1e-3"],
    "muon": ["--model.optimizer", "muon", "--model.lr", "1e-3"],
}


def parse_recipe(text: str) -> tuple[str, list[str]]:
    """'name=--a 1 --b 2' -> ('name', ['--a', '1', '--b', '2']); a bare name is looked up in RECIPES."""
    import shlex

    if "=" not in text.split()[0]:
        if text not in RECIPES:
            raise SystemExit(f"unknown recipe {text!r}; named ones: {sorted(RECIPES)}")
        return text, RECIPES[text]
    name, _, overrides = text.partition("=")
    return name, shlex.split(overrides)


def expand(overrides: list[str], data: Path) -> list[str]:
    """{data} in an override is the data folder (for recipes that change the mixture)."""
    return [item.replace("{data}", str(data)) for item in overrides]


def fit_command(name: str, overrides: list[str], args: argparse.Namespace) -> tuple[list[str], Path]:
    run_dir = Path(args.work).resolve() / name
    data = Path(args.data).resolve()
    command = [
        sys.executable, "-m", "mmllm.cli.main", "fit", "--config", str(ROOT / "configs" / "shapes-tiny.yaml"),
        "--data.tokenizer", str(data / "tokenizer.json"),
        "--data.sources", json.dumps([{"kind": "caption", "path": str(data / "train/captions"), "weight": 1.0},
                                      {"kind": "chat", "path": str(data / "train/chat"), "weight": 2.0}]),
        "--data.val_sources", json.dumps([{"kind": "chat", "path": str(data / "val/chat")},
                                          {"kind": "caption", "path": str(data / "val/captions")}]),
        "--data.val_vqa_questions", str(args.questions),
        "--data.num_workers", str(args.workers),
        "--trainer.max_steps", str(args.steps),
        "--trainer.max_time", "null", "--model.schedule_by_time", "false",  # curves by steps, not by clock
        "--trainer.val_check_interval", str(args.eval_every),
        "--trainer.limit_val_batches", "8",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger", json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                         "init_args": {"save_dir": str(run_dir), "name": "logs"}}]),
        "--trainer.accelerator", args.accelerator,
        "--checkpoint.dirpath", str(run_dir / "checkpoints"),
        "--checkpoint.overwrite", "true",  # a rerun replaces this script's own earlier run of the recipe
        "--export.out", str(run_dir / "model"),
        *expand(overrides, data),
    ]
    return command, run_dir


def run_recipe(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    command, run_dir = fit_command(name, overrides, args)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    with open(run_dir / "fit.log", "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=run_dir)
    wall = time.perf_counter() - start
    print(f"{name}: exit {result.returncode} in {wall:.0f} s", file=sys.stderr, flush=True)
    row = {"recipe": name, "overrides": overrides, "exit": result.returncode, "wall_s": round(wall, 1)}
    if result.returncode != 0:
        row["log_tail"] = (run_dir / "fit.log").read_text()[-2000:]
        return row
    return {**row, **summarise(read_metrics(run_dir / "logs"), wall, args)}


def summarise(rows: list[dict], wall: float, args: argparse.Namespace) -> dict:
    """The validation curve by step, and the first step at which VQA accuracy reached each threshold."""
    curve: dict[int, dict[str, float]] = {}
    for row in rows:
        for key in ("val/vqa_accuracy", "val/loss_chat", "val/loss_caption"):
            if row.get(key):
                curve.setdefault(int(row["step"]), {})[key.split("/")[1]] = round(float(row[key]), 4)
    steps = sorted(curve)
    seconds_per_step = wall / max(1, args.steps)  # includes start-up and validation: an upper bound
    reached = {}
    for threshold in args.thresholds:
        hit = next((s for s in steps if curve[s].get("vqa_accuracy", 0) >= threshold), None)
        reached[f"{threshold:.2f}"] = None if hit is None else {
            "step": hit, "minutes": round(hit * seconds_per_step / 60, 2)}
    best = max((curve[s].get("vqa_accuracy", 0) for s in steps), default=None)
    return {"curve": {str(s): curve[s] for s in steps}, "reached": reached, "best_vqa": best,
            "final": curve[steps[-1]] if steps else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a shapes data folder with tokenizer.json (mmllm demo makes one)")
    parser.add_argument("--recipes", nargs="*", default=[], help=f"named recipes: {sorted(RECIPES)}")
    parser.add_argument("--recipe", action="append", default=[], help="NAME=OVERRIDES, e.g. 'fast=--model.lr 2e-3'")
    parser.add_argument("--steps", type=int, default=680)
    parser.add_argument("--eval-every", type=int, default=68)
    parser.add_argument("--questions", type=int, default=256, help="val questions answered at each validation")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.6, 0.8, 0.9])
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="data loader workers per run")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads per run")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--work", default="runs/curves")
    args = parser.parse_args()
    recipes = [parse_recipe(r) for r in args.recipes] + [parse_recipe(r) for r in args.recipe]
    if not recipes:
        parser.error("name at least one recipe")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda recipe: run_recipe(*recipe, args), recipes))
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"bench": "learning_curves", "date": started, "steps": args.steps,
                      "eval_every": args.eval_every, "questions": args.questions, "parallel": args.parallel,
                      "children_cpu_s": round(cpu.ru_utime + cpu.ru_stime, 1), "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
