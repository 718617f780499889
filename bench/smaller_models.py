"""Pruning and distillation on the shapes demo, each against the control it must beat, at equal steps:

- pruning: the demo recipe trains a base for `--base-steps`; `mmllm prune` cuts a third of its query heads and
  35% of its MLP channels; the pruned model AND the unpruned base are then fine-tuned the same `--extra-steps`
  (same data, same schedule), so the comparison is not tilted by extra training;
- distillation: the README's student (a 2-layer, 128-wide LM) trains alone for `--student-minutes`, then, from
  the same seed, taught by the base (`--model.teacher`) for the same minutes (equal time: the teacher's forward
  pass costs steps) and for the steps the alone run made (equal steps).

Every model is scored on `--questions` val questions asked alone, with a blind pass (blank images) beside it;
steps, wall seconds and learning curves are recorded.

    python bench/smaller_models.py --out bench/results/DATE-smaller-models.json
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDENT_LM = {"dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "mlp_dim": 384, "head_dim": 32,
              "qk_norm": True}


def mmllm(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "mmllm.cli.main", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"mmllm {' '.join(args[:2])}: {result.stderr[-3000:]}")
    return result


PREVIOUS: dict[str, dict] = {}  # model folder -> its run in an earlier report (--reuse)


def fit(name: str, work: Path, shapes: Path, steps: int | None = None, seconds: float | None = None,
        **model) -> dict:
    """The demo config with this bench's data, `model` options over it, ending at `steps` or after `seconds`;
    a run an earlier report of this bench holds (--reuse) is taken from it when its model is still there."""
    run_dir = work / name
    earlier = PREVIOUS.get(str(run_dir / "model"))
    if earlier is not None and (run_dir / "model" / "config.json").is_file():
        return {key: earlier[key] for key in ("model", "steps", "wall_s", "curve")}
    config = yaml.safe_load((REPO / "configs" / "shapes-tiny.yaml").read_text())
    for kind in ("sources", "val_sources"):
        for source in config["data"][kind]:
            source["path"] = str(shapes / source["path"].removeprefix("data/shapes/"))
    config["data"].update(tokenizer=str(shapes / "tokenizer.json"), val_vqa_questions=0)
    config["model"].update(model)
    if "init_from" in model:
        config["model"].pop("preset", None)
    config["trainer"].update(max_steps=steps or 100000, limit_val_batches=0, enable_progress_bar=False,
                             default_root_dir=str(run_dir))
    config["model"]["schedule_by_time"] = seconds is not None
    if seconds is not None:
        config["trainer"]["max_time"] = time.strftime("00:%H:%M:%S", time.gmtime(round(seconds)))
    else:
        config["trainer"].pop("max_time", None)
    config["export"] = {"out": str(run_dir / "model")}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    mmllm("fit", "--config", str(path))
    wall = time.perf_counter() - start
    logs = sorted(run_dir.glob("logs/version_*/metrics.csv"))
    rows = list(csv.DictReader(open(logs[-1]))) if logs else []  # none when the run ended before its first log
    curve = [(int(r["step"]), round(float(r["train/loss"]), 4)) for r in rows if r.get("train/loss")]
    import torch

    steps_done = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    return {"model": str(run_dir / "model"), "steps": steps_done, "wall_s": round(wall, 1), "curve": curve[::5]}


def vqa(model: str, shapes: Path, work: Path, limit: int, blind: bool = False) -> float:
    out = work / f"vqa-{Path(model).parent.name}{'-blind' if blind else ''}.json"
    mmllm("eval", "--model", model, "--data", str(shapes / "val" / "chat"), "--task", "vqa", "--turns", "alone",
          "--limit", str(limit), "--out", str(out), *(["--blind"] if blind else []))
    return round(json.loads(out.read_text())["metrics"]["accuracy"], 4)


def scored(run: dict, shapes: Path, work: Path, limit: int) -> dict:
    return {**run, "vqa": vqa(run["model"], shapes, work, limit), "blind": vqa(run["model"], shapes, work, limit,
                                                                              blind=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--extra-steps", type=int, default=150)
    parser.add_argument("--student-minutes", type=float, default=3.0)
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmllm-smaller-models"))
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an earlier report of this bench: its runs whose models are still in --work are not "
                             "trained again (every model is scored again)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.reuse:
        report = json.loads(args.reuse.read_text())
        PREVIOUS.update({run["model"]: run for part in ("pruning", "distillation") for run in report[part].values()
                         if "steps" in run})
    work, shapes = args.work, args.work / "shapes"
    work.mkdir(parents=True, exist_ok=True)
    if not (shapes / "tokenizer.json").is_file():
        mmllm("data", "shapes", "--out", str(shapes), "--overwrite")
        mmllm("tokenizer", "train", "--data", str(shapes / "train"), "--vocab-size", "512",
              "--out", str(shapes / "tokenizer.json"))
    base = fit("base", work, shapes, steps=args.base_steps)
    pruned_dir = work / "pruned"
    if not (args.reuse and (pruned_dir / "config.json").is_file()):
        mmllm("prune", base["model"], "--out", str(pruned_dir), "--data", str(shapes / "train" / "chat"),
              "--attention-heads", "0.34", "--mlp-channels", "0.35", "--overwrite")
    quick = {"warmup_steps": 10, "lr": 1.0e-3}
    pruning = {
        "base": scored(base, shapes, work, args.questions),
        "pruned, before fine-tuning": scored({"model": str(pruned_dir)}, shapes, work, args.questions),
        "pruned + fine-tuning": scored(fit("pruned-tuned", work, shapes, steps=args.extra_steps,
                                           init_from=str(pruned_dir), **quick), shapes, work, args.questions),
        "unpruned + the same fine-tuning": scored(fit("base-tuned", work, shapes, steps=args.extra_steps,
                                                      init_from=base["model"], **quick), shapes, work,
                                                  args.questions),
    }
    budget = args.student_minutes * 60
    alone = fit("student-alone", work, shapes, seconds=budget, lm=STUDENT_LM)
    taught = {"lm": STUDENT_LM, "teacher": base["model"], "kd_weight": 0.5, "kd_temperature": 2.0}
    distillation = {
        "student alone": scored(alone, shapes, work, args.questions),
        "student taught, equal time": scored(fit("student-taught-time", work, shapes, seconds=budget, **taught),
                                             shapes, work, args.questions),
        "student taught, equal steps": scored(fit("student-taught-steps", work, shapes, steps=alone["steps"],
                                                  **taught), shapes, work, args.questions),
    }
    write_report({"bench": "smaller_models", "date": time.strftime("%Y-%m-%d"), "questions": args.questions,
                  "base_steps": args.base_steps, "extra_steps": args.extra_steps,
                  "student_minutes": args.student_minutes, "pruning": pruning, "distillation": distillation}, args.out)


if __name__ == "__main__":
    main()
