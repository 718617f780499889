"""Masked language modelling, measured: fill-mask accuracy on shapes captions (with the image and blind), on held-out
Python documentation against a unigram baseline, and an MLM phase before captioning at equal total steps. Prints
JSON and writes bench/results/2026-12-07-mlm.json.

    python bench/mlm.py --work /tmp/mlm-bench          # about 11 minutes on 2 cores
    python bench/mlm.py --work /tmp/mlm-bench --quick  # every step at toy sizes, to check the script

(a) shapes: the tiny preset (configs/shapes-tiny.yaml) trained on the captions with `objective: mlm` for --mlm-time,
    then `mmllm eval --task fill-mask` on held-out captions with the image and --blind: colour, shape, size and
    position words, each masked alone (mmllm.evaluation.fill_mask).
(b) pydoc (the text demo's data: Python's documentation topics, split 90/10 by topic): the tiny LM trained with
    `objective: mlm` for --text-time, then fill-mask on the held-out topics (15% of tokens masked, fixed positions)
    against the unigram baseline on the same positions (the training documents' most frequent tokens).
(c) captioning + VQA from scratch for --steps steps, against --mlm-steps of MLM on the captions then the rest of
    the steps on captioning + VQA from that model (`model.init_from`): the same total steps and batch size; VQA
    accuracy (alone) on --questions validation questions, caption BLEU-4 / CIDEr-D / exact match on --captions images.
Every `mmllm` command run is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_common import machine  # noqa: E402

MMLLM = [sys.executable, "-m", "mmllm.cli.main"]
COMMANDS: list[str] = []


def mmllm(*args) -> float:
    """Run one mmllm command (echoed and recorded); its wall seconds."""
    command = [*MMLLM, *map(str, args)]
    COMMANDS.append(" ".join(["mmllm", *map(str, args)]))
    print("$ " + COMMANDS[-1], file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 1)


def sources(*entries: tuple[str, Path, str]) -> str:
    return "[" + ", ".join(f"{{kind: {kind}, path: {path}, objective: {objective}}}"
                           for kind, path, objective in entries) + "]"


def fit(config: str, run: Path, data_sources: str, val_sources: str, tokenizer: Path, *overrides) -> dict:
    seconds = mmllm("fit", "--config", ROOT / "configs" / config, "--data.tokenizer", tokenizer,
                    "--data.sources", data_sources, "--data.val_sources", val_sources,
                    "--data.val_vqa_questions", 0, "--data.num_workers", 1,
                    "--trainer.default_root_dir", run, "--trainer.enable_progress_bar", "false",
                    "--trainer.limit_val_batches", 1, "--checkpoint.dirpath", run / "checkpoints",
                    "--export.out", run / "model", "--export.use_best", "false", *overrides)
    steps = max(int(row["step"]) for row in metrics(run) if row.get("step"))
    return {"seconds": seconds, "steps": steps + 1, "model": str(run / "model")}


def metrics(run: Path) -> list[dict]:
    import csv

    files = sorted(run.glob("logs/version_*/metrics.csv"))
    with open(files[-1], newline="") as handle:
        return list(csv.DictReader(handle))


def evaluate(model: str, data: Path, task: str, out: Path, *extra) -> dict:
    mmllm("eval", "--model", model, "--data", data, "--task", task, "--out", out, *extra)
    return json.loads(out.read_text())


def unigram_baseline(tokenizer_path: Path, train: Path, report: dict) -> dict:
    """Top-1 / top-5 of always guessing the training documents' most frequent ordinary tokens, on the positions
    the fill-mask report scored."""
    from data_pipelines.chat.tokenizer import load_tokenizer
    from data_pipelines.read.shards import read_samples

    tokenizer, _ = load_tokenizer(tokenizer_path)
    special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    counts = Counter(token for sample in read_samples(train, "text")
                     for token in tokenizer.encode(sample.text, add_special_tokens=False).ids if token not in special)
    ranked = [token for token, _ in counts.most_common(5)]
    targets = [t for sample in report["samples"] for t in sample["targets"]]
    return {"top1": sum(t == ranked[0] for t in targets) / len(targets),
            "top5": sum(t in ranked for t in targets) / len(targets), "count": len(targets),
            "most_frequent": [tokenizer.decode([t]) for t in ranked]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/mlm-bench", help="data, runs and reports go here")
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the script, measures nothing")
    parser.add_argument("--mlm-time", default="00:00:02:15", help="(a) training time, DD:HH:MM:SS")
    parser.add_argument("--text-time", default="00:00:01:45", help="(b) training time")
    parser.add_argument("--steps", type=int, default=300, help="(c) total steps of each run")
    parser.add_argument("--mlm-steps", type=int, default=100, help="(c) MLM steps before captioning")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--captions", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "2026-12-07-mlm.json"))
    args = parser.parse_args()
    if args.quick:
        args.mlm_time = args.text_time = "00:00:00:15"
        args.steps, args.mlm_steps, args.questions, args.captions = 12, 4, 16, 8
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(torch.device("cpu")),
              "torch_threads": torch.get_num_threads(), "options": vars(args).copy()}

    # -- data: shapes (48 px, the demo's) and pydoc topics (the text demo's)
    shapes = work / "shapes"
    train, val = (200, 40) if args.quick else (3000, 300)
    report["setup_seconds"] = {"shapes": mmllm("data", "shapes", "--out", shapes, "--train", train, "--val", val,
                                               "--test", 16, "--image-size", 48, "--overwrite")}
    mmllm("tokenizer", "train", "--data", shapes / "train", "--vocab-size", 512, "--out", shapes / "tokenizer.json")
    from mmllm.cli.demo import write_pydoc_topics

    pydoc = work / "pydoc"
    train_files, val_files = write_pydoc_topics(pydoc / "raw")  # paths relative to the folder above --work
    train_files, val_files = ([str(work.resolve().parent / f) for f in files] for files in (train_files, val_files))
    mmllm("data", "from-text", *train_files, "--out", pydoc / "train", "--overwrite")
    mmllm("data", "from-text", *val_files, "--out", pydoc / "val", "--overwrite")
    mmllm("tokenizer", "train", "--data", pydoc / "train", "--vocab-size", 2048, "--out", pydoc / "tokenizer.json")
    shapes_tok, pydoc_tok = shapes / "tokenizer.json", pydoc / "tokenizer.json"
    caps, chat = shapes / "train" / "captions", shapes / "train" / "chat"
    val_caps, val_chat = shapes / "val" / "captions", shapes / "val" / "chat"
    batch = ["--data.batch_size", args.batch_size]

    # -- (a) shapes captions, MLM only; fill-mask with the image and blind
    run_a = fit("shapes-tiny.yaml", work / "a-shapes-mlm", sources(("caption", caps, "mlm")),
                sources(("caption", val_caps, "mlm")), shapes_tok, *batch, "--trainer.max_time", args.mlm_time,
                "--trainer.val_check_interval", 100)
    seen = evaluate(run_a["model"], val_caps, "fill-mask", work / "a-fill-mask.json")
    blind = evaluate(run_a["model"], val_caps, "fill-mask", work / "a-fill-mask-blind.json", "--blind")
    report["a_shapes"] = {"fit": run_a, "with_image": seen["metrics"], "blind": blind["metrics"]}

    # -- (b) pydoc, MLM only, against the unigram baseline
    run_b = fit("text-only.yaml", work / "b-pydoc-mlm", sources(("text", pydoc / "train", "mlm")),
                sources(("text", pydoc / "val", "mlm")), pydoc_tok, "--trainer.max_time", args.text_time)
    text = evaluate(run_b["model"], pydoc / "val", "fill-mask", work / "b-fill-mask.json")
    report["b_pydoc"] = {"fit": run_b, "mlm": text["metrics"],
                         "unigram": unigram_baseline(pydoc_tok, pydoc / "train", text)}

    # -- (c) MLM phase then captioning + VQA, against captioning + VQA only, equal total steps
    no_time = ["--trainer.max_time", "null", "--model.schedule_by_time", "false", "--model.warmup_steps",
               max(1, args.steps // 10)]
    causal = sources(("caption", caps, "causal"), ("chat", chat, "causal"))
    results = {}
    phase = fit("shapes-tiny.yaml", work / "c-phase1-mlm", sources(("caption", caps, "mlm")),
                sources(("caption", val_caps, "mlm")), shapes_tok, *batch, *no_time,
                "--trainer.max_steps", args.mlm_steps, "--trainer.val_check_interval", args.mlm_steps)
    runs = {
        "captioning_only": fit("shapes-tiny.yaml", work / "c-causal", causal, sources(("chat", val_chat, "causal")),
                               shapes_tok, *batch, *no_time, "--trainer.max_steps", args.steps,
                               "--trainer.val_check_interval", args.steps),
        "mlm_then_captioning": fit("shapes-tiny.yaml", work / "c-mlm-then-causal", causal,
                                   sources(("chat", val_chat, "causal")), shapes_tok, *batch, *no_time,
                                   "--trainer.max_steps", args.steps - args.mlm_steps,
                                   "--trainer.val_check_interval", args.steps - args.mlm_steps,
                                   "--model.init_from", phase["model"]),
    }
    for name, run in runs.items():
        vqa = evaluate(run["model"], val_chat, "vqa", work / f"c-{name}-vqa.json", "--limit", args.questions,
                       "--turns", "alone")
        caption = evaluate(run["model"], val_caps, "caption", work / f"c-{name}-caption.json", "--limit",
                           args.captions)
        results[name] = {"fit": run, "vqa_accuracy": vqa["metrics"]["accuracy"],
                         "vqa_per_type": vqa["metrics"].get("accuracy_per_question_type"),
                         "caption": {k: caption["metrics"][k] for k in ("bleu4", "cider_d", "exact_match")}}
    results["mlm_then_captioning"]["mlm_phase"] = phase
    report["c_mlm_phase"] = results
    report["commands"] = COMMANDS
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))
    if not args.quick:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
