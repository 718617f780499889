"""DPO of a stated rule into SmolLM2-135M-Instruct with LoRA: the rule's success rate on held-out prompts, before and
after; prints JSON.

    python bench/preference_text.py --work runs/preference-text --out bench/results/DATE-preference-text.json

The rule: when the prompt asks for it, the answer ends with the word DONE. The prompts are real: Debian's package
synopses (`apt-cache dumpavail` with the Translation-en files, read as bench/seq2seq.py reads them), each asked as
"Describe the Debian package P in one short sentence, then write DONE." The chosen answer is the package's own
synopsis followed by " DONE", the rejected one the synopsis alone; packages are split into train and held-out by
source package, so no held-out package's family was trained on.
1. The pairs become preference shards (`mmllm data from-preferences`); the held-out prompts become chat shards
   (`mmllm data from-pairs`), which `mmllm eval --task seq2seq` answers greedily.
2. Before: SmolLM2 answers the held-out prompts. Success: its answer's last word is DONE; and, stricter, the rule
   kept by a real answer (at least three words, then one DONE).
3. `mmllm fit`: LoRA rank 16 on SmolLM2, model.preference {dpo, beta, reference: adapters_off, sft_weight},
   --steps steps.
4. After: the merged model answers the same prompts.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import machine, smollm2_folder, write_report  # noqa: E402
from lora_smollm2 import mmllm  # noqa: E402
from seq2seq import held_out, package_descriptions, write_jsonl  # noqa: E402

import yaml  # noqa: E402

ASK = "Describe the Debian package {package} in one short sentence, then write DONE."


def follows_rule(answer: str) -> bool:
    words = re.findall(r"[A-Za-z]+", answer)
    return bool(words) and words[-1] == "DONE"


def answers_and_follows(answer: str) -> bool:
    """The rule kept by a real answer: at least three words before one DONE, the last word (a model that has
    collapsed to "DONE DONE DONE" follows the rule and answers nothing)."""
    words = re.findall(r"[A-Za-z]+", answer)
    return follows_rule(answer) and words.count("DONE") == 1 and len(words) >= 4


def rows(descriptions: list[dict]) -> list[dict]:
    out = []
    for row in descriptions:
        synopsis = row["synopsis"].rstrip(".")
        synopsis = synopsis[0].upper() + synopsis[1:]
        out.append({"prompt": ASK.format(package=row["package"]), "chosen": f"{synopsis}. DONE",
                    "rejected": f"{synopsis}.", "package": row["package"], "source_package": row["source_package"]})
    return out


def answers(model: Path, data: Path, work: Path, name: str, max_new_tokens: int) -> dict:
    """Greedy answers to the held-out prompts; the share that follows the rule, and a few examples."""
    out = work / f"eval-{name}.json"
    start = time.perf_counter()
    mmllm("eval", "--model", str(model), "--data", str(data), "--task", "seq2seq", "--max-new-tokens",
          str(max_new_tokens), "--batch-size", "8", "--out", str(out))
    samples = json.loads(out.read_text())["samples"]
    followed = [follows_rule(s["prediction"]) for s in samples]
    answered = [answers_and_follows(s["prediction"]) for s in samples]
    return {"rule_success": sum(followed) / len(followed), "rule_with_an_answer": sum(answered) / len(answered),
            "prompts": len(followed),
            "eval_seconds": round(time.perf_counter() - start, 1),
            "examples": [{"prompt": s.get("source", ""), "answer": s["prediction"]} for s in samples[:4]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/preference-text"))
    parser.add_argument("--train", type=int, default=400, help="training pairs")
    parser.add_argument("--test", type=int, default=48, help="held-out prompts")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--sft-weight", type=float, default=0.0, help="model.preference.sft_weight")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    _, base = smollm2_folder(work)
    train, test = held_out(rows(package_descriptions()), "source_package", 0.1, seed=0)
    random.Random(0).shuffle(train)
    random.Random(1).shuffle(test)
    train, test = train[:args.train], test[:args.test]
    mmllm("data", "from-preferences", str(write_jsonl(train, work / "train.jsonl")), "--out", str(work / "train"),
          "--overwrite")
    held = [{"prompt": r["prompt"], "answer": r["chosen"], "package": r["package"]} for r in test]
    mmllm("data", "from-pairs", str(write_jsonl(held, work / "test.jsonl")), "--source-field", "prompt",
          "--target-field", "answer", "--out", str(work / "test"), "--overwrite")
    report = {"bench": "preference_text", "rule": "the answer's last word is DONE", "ask": ASK,
              "machine": machine(__import__("torch").device("cpu")), "train_pairs": len(train),
              "held_out_prompts": len(test), "settings": {k: str(v) for k, v in vars(args).items()}}
    report["before"] = answers(base, work / "test", work, "before", args.max_new_tokens)
    write_report(report, args.out)

    run = work / "dpo"
    config = {
        "seed_everything": 0,
        "model": {"init_from": str(base), "lr": args.lr, "warmup_steps": 5, "min_lr_ratio": 0.1,
                  "lora": {"rank": 16, "alpha": 32, "dropout": 0.0},
                  "preference": {"loss": "dpo", "beta": args.beta, "reference": "adapters_off",
                                 "sft_weight": args.sft_weight}},
        "data": {"tokenizer": str(base / "tokenizer.json"), "batch_size": args.batch_size, "max_length": 256,
                 "num_workers": 1, "val_vqa_questions": 0,
                 "sources": [{"kind": "preference", "path": str(work / "train")}], "val_sources": []},
        "trainer": {"max_steps": args.steps, "precision": "32-true", "limit_val_batches": 0, "log_every_n_steps": 5,
                    "enable_progress_bar": False, "default_root_dir": str(run)},
        "checkpoint": {"overwrite": True},
        "export": {"out": str(run / "adapters")},
    }
    (work / "dpo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    mmllm("fit", "--config", str(work / "dpo.yaml"))
    fit_seconds = time.perf_counter() - start
    mmllm("export", str(run / "checkpoints" / "last.ckpt"), "--merge-lora", "--overwrite", "--out", str(run / "merged"))
    import csv

    logged = [r for log in sorted(run.glob("logs/version_*/metrics.csv")) for r in csv.DictReader(open(log))]
    curve = [{"step": int(r["step"]), **{k: round(float(v), 4) for k, v in r.items() if k.startswith("train/") and v}}
             for r in logged if r.get("train/loss")]
    report["dpo"] = {"steps": args.steps, "fit_seconds": round(fit_seconds, 1), "curve": curve}
    report["after"] = answers(run / "merged", work / "test", work, "after", args.max_new_tokens)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
