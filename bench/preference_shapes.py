"""DPO against hallucination on the shapes task: a half-trained model before and after preference tuning; prints JSON.

    python bench/preference_shapes.py --work runs/preference --out bench/results/DATE-preference-shapes.json

1. The shapes data with `--preferences` (each question's true answer chosen, a plausible wrong one rejected) and the
   demo's tokenizer, in --work (made once).
2. The base: configs/shapes-tiny.yaml trained for half the demo's budget (--base-time), or --base MODEL.
3. From the base, for the same number of steps (--steps) and at the same learning rate:
   - `dpo`: model.preference {loss: dpo, beta: --beta}, the frozen base as reference, on the preference pairs;
   - `sft`: the same steps of ordinary fine-tuning on the demo's captions and chats, so DPO's gain is told from
     more training.
4. Each model evaluated on the val questions asked alone (`mmllm eval --task vqa --turns alone`), and blind:
   accuracy per question type, and the POPE-style probes: the rate of "yes" to questions about absent objects
   (`exists` questions whose answer is no) and to every yes/no question whose answer is no.
Nothing else may run on the machine meanwhile: the base is trained for a fixed time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "shapes-tiny.yaml"
sys.path.insert(0, str(Path(__file__).parent))
import bench_common as common  # noqa: E402


def mmllm(*args: str, cwd: Path) -> None:
    command = [sys.executable, "-m", "mmllm.cli.main", *map(str, args)]
    print("$ mmllm " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def probes(report: dict) -> dict:
    """Accuracy, per question type, and the rates of "yes" where the answer is no."""
    samples = [s for s in report["samples"] if s.get("turns", "alone") == "alone"]
    metrics = (report.get("metrics_by_turns") or {"alone": report["metrics"]})["alone"]

    def yes_rate(rows):
        return sum(r["prediction"].strip().lower() == "yes" for r in rows) / max(1, len(rows))

    absent = [s for s in samples if s["question_type"] == "exists" and s["answer"] == "no"]
    negatives = [s for s in samples if s["answer"] == "no"]
    return {"accuracy": metrics["accuracy"], "per_question_type": metrics["accuracy_per_question_type"],
            "yes_to_absent_objects": yes_rate(absent), "absent_object_questions": len(absent),
            "yes_to_every_no_question": yes_rate(negatives), "no_questions": len(negatives)}


def evaluate(model: Path, data: Path, work: Path, name: str) -> dict:
    result = {}
    for blind in (False, True):
        out = work / f"eval-{name}{'-blind' if blind else ''}.json"
        mmllm("eval", "--model", model, "--data", data / "val" / "chat", "--task", "vqa", "--turns", "alone",
              "--out", out, *(["--blind"] if blind else []), cwd=work)
        result["blind" if blind else "seen"] = probes(json.loads(out.read_text()))
    return result


def data_overrides(data: Path, kind: str) -> list[str]:
    if kind == "preference":
        return ["--data.sources", f"[{{kind: preference, path: {data}/train/preference}}]",
                "--data.val_sources", f"[{{kind: preference, path: {data}/val/preference}}]",
                "--data.val_vqa_questions", "0"]
    return ["--data.sources", f"[{{kind: caption, path: {data}/train/captions, weight: 1.0}}, "
                              f"{{kind: chat, path: {data}/train/chat, weight: 4.0}}]",  # the demo's mixture
            "--data.val_sources", f"[{{kind: chat, path: {data}/val/chat}}]"]


def fit(work: Path, data: Path, name: str, extra: list[str]) -> tuple[Path, float]:
    """`mmllm fit` of the demo config with `extra`, into WORK/NAME; (the exported model, seconds)."""
    start = time.perf_counter()
    mmllm("fit", "--config", CONFIG, "--data.tokenizer", data / "tokenizer.json", "--checkpoint.overwrite", "true",
          "--trainer.default_root_dir", work / name, "--export.out", work / f"model-{name}", *extra, cwd=work)
    return work / f"model-{name}", time.perf_counter() - start


def curve(work: Path, name: str) -> list[dict]:
    """The logged validation rows of a fit (step and every val/ metric)."""
    import csv

    rows = []
    for path in sorted((work / name / "logs").glob("version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                values = {k: float(v) for k, v in row.items() if k.startswith("val/") and v not in ("", None)}
                if values:
                    rows.append({"step": int(float(row["step"])), **values})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/preference"))
    parser.add_argument("--base", type=Path, help="a model folder to start from (default: trained here)")
    parser.add_argument("--base-time", default="00:00:04:45", help="the base's training time (half the demo's)")
    parser.add_argument("--steps", type=int, default=300, help="DPO (and the SFT control) steps from the base")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--loss", default="dpo", choices=["dpo", "ipo"])
    parser.add_argument("--sft-weight", type=float, default=0.0, help="model.preference.sft_weight (TRL's sft term)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step (two rows each)")
    parser.add_argument("--runs", nargs="+", default=["dpo", "sft"], choices=["dpo", "sft"],
                        help="which tunings to run from the base (sft: the control)")
    parser.add_argument("--tag", default="", help="appended to the run names (a second setting in the same --work)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if not (data / "tokenizer.json").is_file():
        mmllm("data", "shapes", "--out", data, "--preferences", "--overwrite", cwd=work)
        mmllm("tokenizer", "train", "--data", data / "train", "--vocab-size", "512", "--out", data / "tokenizer.json",
              cwd=work)
    report = {"bench": "preference_shapes", "machine": common.machine(__import__("torch").device("cpu")),
              "settings": {k: str(v) for k, v in vars(args).items()}, "models": {}}
    base, seconds = (args.base.resolve(), None) if args.base else fit(
        work, data, "base", data_overrides(data, "demo") + ["--trainer.max_time", args.base_time])
    report["models"]["base"] = {"fit_s": seconds, **evaluate(base, data, work, "base")}
    tuning = ["--model.init_from", base, "--model.lr", str(args.lr), "--model.warmup_steps", "20",
              "--model.schedule_by_time", "false", "--trainer.max_time", "null", "--trainer.max_steps", str(args.steps),
              "--trainer.val_check_interval", str(max(1, args.steps // 4))]
    preference = f"{{loss: {args.loss}, beta: {args.beta}, reference: frozen, sft_weight: {args.sft_weight}}}"
    runs = {
        "dpo": data_overrides(data, "preference") + ["--model.preference", preference,
                                                     "--data.batch_size", str(args.batch_size)],  # 2 rows a pair
        "sft": data_overrides(data, "demo"),
    }
    for run, extra in ((run, runs[run]) for run in args.runs):
        name = run + args.tag
        model, seconds = fit(work, data, name, tuning + extra)
        report["models"][name] = {"fit_s": seconds, "curve": curve(work, name), **evaluate(model, data, work, name)}
        common.write_report(report, args.out)  # after each model: a cut run keeps what it measured


if __name__ == "__main__":
    main()
