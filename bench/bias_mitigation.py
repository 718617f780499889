"""Bias mitigation on a planted bias (issue 40, part 3): the demo recipe on a shapes train split whose circles are red
95% of the time, then each mitigation alone at the same steps; prints and writes JSON.

    flock /tmp/mmllm-bench.lock python bench/bias_mitigation.py --steps 600 --seeds 0 1 \
        --out bench/results/2026-12-07-bias-mitigation-600.json

Every step is an `mmllm` command (printed in the JSON):
1. `mmllm data shapes --spurious circle:red:0.95` (val and test balanced), `mmllm tokenizer train`;
2. `mmllm fit --config configs/shapes-tiny.yaml` for --steps steps (the cosine by steps, not by the clock) for each
   run: baseline, `--data.balance {by: group, mode: resample}`, `... mode: reweight`, `--model.group_dro {by:
   group}`, `--data.counterfactual {swaps: "red=blue,green", prob: 0.5}`;
3. per run, `mmllm eval --task vqa --turns alone`:
   - on the probe: "What colour is the circle?" about every val scene with exactly one circle (one question per
     image; its json's `spurious` says red circle or other circle), `--group-by spurious`: the accuracy on red and
     on non-red circles, each with its Wilson interval; the gap's 95% interval is Newcombe's (hybrid score, from
     the two Wilson intervals);
   - on the first --questions val questions, `--counterfactual "red=blue,green"`: overall accuracy and how often
     the answer changes when the scene says it should and when it should not.
The learning curve of each run is its train/loss every 10 steps (metrics.csv).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {
    "baseline": [],
    "balance-resample": ["--data.balance", "{by: group, mode: resample}"],
    "balance-reweight": ["--data.balance", "{by: group, mode: reweight}"],
    "group-dro": ["--model.group_dro", "{by: group, step_size: 0.01}"],
    "counterfactual": ["--data.counterfactual", '{swaps: "red=blue,green", prob: 0.5}'],
}
SWAPS = "red=blue,green"


def mmllm(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmllm.cli.main", *args]


def run(command: list[str], log: Path, commands: list[str]) -> float:
    """Run a command (its output to log), record it, and return its wall seconds; stop the bench if it fails."""
    import shlex

    commands.append(shlex.join(["mmllm", *command[3:]] if command[:3] == mmllm()[:3] else command))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    print(f"{log.name}: exit {result.returncode} in {seconds:.0f} s", file=sys.stderr, flush=True)
    if result.returncode != 0:
        raise SystemExit(f"{commands[-1]} failed:\n{log.read_text()[-3000:]}")
    return round(seconds, 1)


def write_probe(val_chat: Path, out: Path) -> dict:
    """Chat shards asking "What colour is the circle?" about each val scene with exactly one circle."""
    from data_pipelines.convert.writers import ShardWriter
    from data_pipelines.read.shards import expand_shards, tar_samples
    from data_pipelines.read.bad_samples import BadSampleHandler

    counts = {"red circle": 0, "other circle": 0}
    question = "What colour is the circle?"
    with ShardWriter(out, maxcount=10_000, overwrite=True, report=lambda *_: None) as writer:
        for raw in tar_samples(expand_shards(str(val_chat)), BadSampleHandler()):
            scene = json.loads(raw["json"])
            circles = [o for o in scene["objects"] if o["shape"] == "circle"]
            if len(circles) != 1:
                continue
            colour = circles[0]["colour"]
            group = "red circle" if colour == "red" else "other circle"
            counts[group] += 1
            writer.write({"png": raw["png"], "json": {
                "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": colour}],
                "questions": [{"question": question, "answer": colour, "type": "colour", "shape": "circle",
                               "colour": colour, "spurious": group}],
                "objects": scene["objects"]}}, key=raw["__key__"])
    return counts


def newcombe_gap(a: dict, b: dict) -> list[float]:
    """95% interval of accuracy(a) - accuracy(b) from the groups' Wilson intervals (Newcombe 1998, method 10)."""
    p1, (l1, u1) = a["accuracy"], a["ci95"]
    p2, (l2, u2) = b["accuracy"], b["ci95"]
    gap = p1 - p2
    return [gap - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), gap + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)]


def learning_curve(run_dir: Path) -> list[list[float]]:
    from mmllm.evaluation.plots import read_metrics

    return [[int(row["step"]), round(float(row["train/loss"]), 4)]
            for row in read_metrics(run_dir / "logs") if row.get("train/loss")]


def summarise(name: str, probe: dict, general: dict, run_dir: Path, fit_s: float, eval_s: float) -> dict:
    groups = {row["group"]: row for row in probe["groups"]["groups"]}
    empty = {"count": 0, "accuracy": float("nan"), "ci95": [float("nan")] * 2}
    red, other = groups.get("red circle", empty), groups.get("other circle", empty)
    cases = general["counterfactual"]["cases"]
    fit_log = (run_dir / "fit.log").read_text().splitlines()
    said = [line for line in fit_log if line.startswith(("data.balance", "model.group_dro"))]
    return {
        "run": name, "overrides": RUNS[name], "fit_s": fit_s, "eval_s": eval_s, "fit_said": said,
        "val_accuracy": general["metrics"]["accuracy"], "val_questions": general["metrics"]["count"],
        "val_accuracy_per_question_type": general["metrics"].get("accuracy_per_question_type"),
        "circle_colour": {
            "red": {k: red[k] for k in ("count", "accuracy", "ci95", "blind_accuracy") if k in red},
            "non_red": {k: other[k] for k in ("count", "accuracy", "ci95", "blind_accuracy") if k in other},
            "gap": red["accuracy"] - other["accuracy"], "gap_ci95": newcombe_gap(red, other),
            "gap_interval": "Newcombe (hybrid Wilson score)",
            "largest_gap_test": probe["groups"].get("largest_gap"),
        },
        "counterfactual": {case: cases[case] for case in ("should change", "should not change", "unknown")},
        "counterfactual_by_swap": {swap: {case: entry[case] for case in ("should change", "should not change")}
                                   for swap, entry in general["counterfactual"]["by_swap"].items()},
        "learning_curve_train_loss": learning_curve(run_dir),
    }


def compare(r: dict, baseline: dict) -> None:
    """The target (issue 40): the gap at most half the baseline's, with val accuracy at most 2 points lower."""
    gap = baseline["circle_colour"]["gap"]
    r["gap_vs_baseline"] = abs(r["circle_colour"]["gap"] / gap) if gap else None  # either sign
    r["val_accuracy_change_points"] = round(100 * (r["val_accuracy"] - baseline["val_accuracy"]), 2)
    r["target_met"] = (r["run"] != "baseline" and r["gap_vs_baseline"] is not None
                       and r["gap_vs_baseline"] <= 0.5 and r["val_accuracy_change_points"] >= -2)


def mean_over_seeds(results: list[dict]) -> list[dict]:
    """Per mitigation: the mean over seeds of the gap, its ratio to the baseline's and the accuracy change."""
    rows = []
    for name in dict.fromkeys(r["run"] for r in results):
        runs = [r for r in results if r["run"] == name]
        row = {"run": name, "seeds": [r["seed"] for r in runs],
               "val_accuracy": sum(r["val_accuracy"] for r in runs) / len(runs),
               "gap": sum(r["circle_colour"]["gap"] for r in runs) / len(runs)}
        if all(r.get("gap_vs_baseline") is not None for r in runs):
            row["gap_vs_baseline"] = sum(r["gap_vs_baseline"] for r in runs) / len(runs)
            row["val_accuracy_change_points"] = round(sum(r["val_accuracy_change_points"] for r in runs) / len(runs), 2)
            row["target_met_every_seed"] = all(r["target_met"] for r in runs)
        rows.append(row)
    return rows


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", "").strip()
        flags = fields.get("Flags", "")
        isa = "AMX" if "amx_tile" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "?"
        return f"{os.cpu_count()} CPUs, {model} ({isa}), {platform.system()}"
    except OSError:
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=250, help="training steps of every run (default 250)")
    parser.add_argument("--train", type=int, default=8000, help="train scenes (default 8000, the demo's)")
    parser.add_argument("--val", type=int, default=2000, help="val scenes; the probe asks about those with one circle")
    parser.add_argument("--questions", type=int, default=500, help="val questions for overall accuracy and the "
                                                                   "counterfactuals (default 500)")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seed_everything of each run; every run is repeated per seed (default 0)")
    parser.add_argument("--work", default="/tmp/bias-mitigation")
    parser.add_argument("--reuse", action="store_true",
                        help="a run whose reports are already in --work is read, not trained again (fit_s null)")
    parser.add_argument("--out", default="bench/results/2026-12-07-bias-mitigation.json")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data, commands, started = work / "data", [], time.time()
    timings = {"data": run(mmllm("data", "shapes", "--out", str(data), "--train", str(args.train), "--val",
                                 str(args.val), "--test", "10", "--spurious", "circle:red:0.95", "--overwrite"),
                           work / "data.log", commands)}
    timings["tokenizer"] = run(mmllm("tokenizer", "train", "--data", str(data / "train"), "--vocab-size", "512",
                                     "--out", str(data / "tokenizer.json")), work / "tokenizer.log", commands)
    probe_counts = write_probe(data / "val" / "chat", work / "probe")
    commands.append(f"# the probe: 'What colour is the circle?' about each val scene with one circle: {probe_counts}")
    results = []
    for seed, name in [(seed, name) for seed in args.seeds for name in args.runs]:
        run_dir = work / (name if seed == 0 else f"{name}-seed{seed}")
        run_dir.mkdir(exist_ok=True)
        fit_command = mmllm(
            "fit", "--config", "configs/shapes-tiny.yaml",
            "--data.tokenizer", str(data / "tokenizer.json"),
            "--data.sources", json.dumps([{"kind": "caption", "path": str(data / "train/captions"), "weight": 1.0},
                                          {"kind": "chat", "path": str(data / "train/chat"), "weight": 4.0}]),
            "--data.val_sources", json.dumps([{"kind": "chat", "path": str(data / "val/chat")}]),
            "--trainer.max_steps", str(args.steps), "--trainer.max_time", "null", "--model.schedule_by_time", "false",
            "--trainer.val_check_interval", str(args.steps), "--trainer.limit_val_batches", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger", json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                             "init_args": {"save_dir": str(run_dir), "name": "logs"}}]),
            "--checkpoint.dirpath", str(run_dir / "checkpoints"), "--checkpoint.overwrite", "true",
            "--export.out", str(run_dir / "model"), "--seed_everything", str(seed), *RUNS[name])
        if args.reuse and all((run_dir / f).is_file() for f in ("probe.json", "general.json", "fit.log")):
            probe = json.loads((run_dir / "probe.json").read_text())
            general = json.loads((run_dir / "general.json").read_text())
            import shlex

            commands.append(shlex.join(["mmllm", *fit_command[3:]]) + "  # reused: trained by an earlier run")
            results.append({"seed": seed, "reused": True} | summarise(name, probe, general, run_dir, None, None))
            continue
        fit_s = run(fit_command, run_dir / "fit.log", commands)
        start = time.perf_counter()
        run(mmllm("eval", "--model", str(run_dir / "model"), "--data", str(work / "probe"), "--task", "vqa",
                  "--turns", "alone", "--group-by", "spurious", "--out", str(run_dir / "probe.json")),
            run_dir / "eval-probe.log", commands)
        run(mmllm("eval", "--model", str(run_dir / "model"), "--data", str(data / "val/chat"), "--task", "vqa",
                  "--turns", "alone", "--limit", str(args.questions), "--counterfactual", SWAPS,
                  "--out", str(run_dir / "general.json")), run_dir / "eval-general.log", commands)
        eval_s = round(time.perf_counter() - start, 1)
        probe = json.loads((run_dir / "probe.json").read_text())
        general = json.loads((run_dir / "general.json").read_text())
        results.append({"seed": seed} | summarise(name, probe, general, run_dir, fit_s, eval_s))
        print(json.dumps({k: results[-1][k] for k in ("run", "seed", "val_accuracy")} | {
            "gap": results[-1]["circle_colour"]["gap"]}), file=sys.stderr, flush=True)
    for r in results:  # each run against its own seed's baseline
        baseline = next((b for b in results if b["run"] == "baseline" and b["seed"] == r["seed"]), None)
        if baseline is not None:
            compare(r, baseline)
    mean = mean_over_seeds(results)
    report = {
        "what": "issue 40 part 3: bias mitigation on a planted bias (train circles red 95%); the demo recipe "
                f"(configs/shapes-tiny.yaml) for {args.steps} steps per run, each mitigation alone",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)), "machine": machine(),
        "torch": __import__("torch").__version__, "steps": args.steps, "train_scenes": args.train,
        "val_scenes": args.val, "probe": probe_counts, "general_questions": args.questions,
        "seeds": args.seeds, "timings_s": timings, "wall_s": round(time.time() - started, 1), "commands": commands,
        "mean_over_seeds": mean, "runs": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
