"""Run a demo end to end, printing each mmllm command as it runs it (the README's first command).

`mmllm demo shapes` (default): generate the shapes data, train a tokenizer, fit configs/shapes-tiny.yaml,
then caption and answer questions about held-out images and evaluate on `val` and `test_compositional`,
with and without --blind. `mmllm demo text`: train the LM alone on Python's own documentation
(pydoc_data.topics, split 90/10 by topic) and report bits per byte on the held-out topics.
Every step is an ordinary mmllm command, so each can be rerun by hand.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", choices=["shapes", "text"], default="shapes", help="which demo (default shapes)")
    parser.add_argument("--workdir", default=".", help="where data/, runs/ and models/ go (default: here)")
    parser.add_argument("--config", default=None, help="the fit config (default configs/shapes-tiny.yaml or configs/text-only.yaml)")
    parser.add_argument("--train", type=int, default=None, help="shapes training scenes (default: the generator's)")
    parser.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps")
    parser.add_argument("--max-time", default=None, help="override trainer.max_time, e.g. 00:00:08:00")
    parser.add_argument("--fresh", action="store_true", help="regenerate data that already exists")


class Steps:
    """Runs mmllm commands in a working folder, echoing them and timing the whole demo."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.start = time.perf_counter()

    def run(self, *args: str, capture: bool = False) -> str:
        print(f"\n$ mmllm {shlex.join(args)}", flush=True)
        command = [sys.executable, "-m", "mmllm.cli.main", *args]
        result = subprocess.run(command, cwd=self.workdir, text=True,
                                stdout=subprocess.PIPE if capture else None)
        if result.returncode != 0:
            raise UsageError(f"demo step failed (exit {result.returncode}): mmllm {shlex.join(args)}")
        if capture:
            print(result.stdout, end="", flush=True)
        return result.stdout or ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _config_path(given: str | None, default: str) -> str:
    path = Path(given or Path(__file__).resolve().parents[2] / "configs" / default)
    if not path.is_file():
        raise UsageError(f"config {path} does not exist")
    return str(path)


def _fit_overrides(args: argparse.Namespace) -> list[str]:
    overrides = ["--checkpoint.overwrite", "true"]  # a demo run again replaces the demo's own earlier run
    if args.max_steps is not None:
        overrides += ["--trainer.max_steps", str(args.max_steps)]
    if args.max_time is not None:
        overrides += ["--trainer.max_time", args.max_time]
    return overrides


def shapes_demo(args: argparse.Namespace, steps: Steps) -> None:
    workdir = steps.workdir
    data = workdir / "data" / "shapes"
    if args.fresh or not (data / "train" / "chat" / "sizes.json").is_file():
        steps.run("data", "shapes", "--out", "data/shapes", "--overwrite",
                  *(["--train", str(args.train)] if args.train else []))
    steps.run("tokenizer", "train", "--data", "data/shapes/train", "--vocab-size", "512",
              "--out", "data/shapes/tokenizer.json")
    steps.run("fit", "--config", _config_path(args.config, "shapes-tiny.yaml"), *_fit_overrides(args))
    model = "models/shapes-tiny"
    examples = extract_examples(data / "test_compositional" / "chat", workdir / "data" / "examples", count=3)
    steps.run("caption", "--model", model, *examples)
    for example in examples:
        question = example_question(Path(workdir, example))
        steps.run("ask", "--model", model, example, question["question"])
        print(f"  (expected: {question['answer']})")
    results = {}
    for split in ("val", "test_compositional"):
        for blind in (False, True):
            name = f"{split}{' blind' if blind else ''}"
            out = f"runs/eval-{split}{'-blind' if blind else ''}.json"
            # blind: one turns mode is enough to show what the language prior alone gets
            steps.run("eval", "--model", model, "--data", f"data/shapes/{split}/chat", "--task", "vqa",
                      "--out", out, *(["--blind", "--turns", "alone"] if blind else []))
            report = json.loads((workdir / out).read_text())
            for mode, metrics in report.get("metrics_by_turns", {"alone": report["metrics"]}).items():
                results[f"vqa {name} ({mode})"] = metrics["accuracy"]
    steps.run("eval", "--model", model, "--data", "data/shapes/val/captions", "--task", "caption",
              "--out", "runs/eval-val-captions.json")
    captions = json.loads((workdir / "runs/eval-val-captions.json").read_text())["metrics"]
    results["caption exact match val"] = captions["exact_match"]
    print("\n== demo summary")
    for name, value in results.items():
        print(f"  {name:40s} {100 * value:6.1f}%")
    print(f"  {'wall time':40s} {steps.elapsed() / 60:6.1f} min")


def extract_examples(chat_shards: Path, out: Path, count: int) -> list[str]:
    """Copy the first `count` images of a chat shard folder to `out`, with their questions as json."""
    out.mkdir(parents=True, exist_ok=True)
    shard = sorted(chat_shards.glob("*.tar"))[0]
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(member).read()
            if len(members) > count:
                break
    paths = []
    for key, files in list(members.items())[:count]:
        ext = next(e for e in ("png", "jpg", "webp") if e in files)
        (out / f"{key}.{ext}").write_bytes(files[ext])
        (out / f"{key}.json").write_bytes(files["json"])
        paths.append(str((out / f"{key}.{ext}").relative_to(out.parent.parent)))
    return paths


def example_question(image: Path) -> dict:
    info = json.loads(image.with_suffix(".json").read_text())
    return random.Random(image.stem).choice(info["questions"])


def text_demo(args: argparse.Namespace, steps: Steps) -> None:
    workdir = steps.workdir
    if args.fresh or not (workdir / "data" / "pydoc" / "train" / "sizes.json").is_file():
        train_files, val_files = write_pydoc_topics(workdir / "data" / "pydoc" / "raw")
        steps.run("data", "from-text", *train_files, "--out", "data/pydoc/train", "--overwrite")
        steps.run("data", "from-text", *val_files, "--out", "data/pydoc/val", "--overwrite")
    steps.run("tokenizer", "train", "--data", "data/pydoc/train", "--vocab-size", "2048",
              "--out", "data/pydoc/tokenizer.json")
    steps.run("fit", "--config", _config_path(args.config, "text-only.yaml"), *_fit_overrides(args))
    steps.run("eval", "--model", "models/text-only", "--data", "data/pydoc/val", "--task", "text",
              "--out", "runs/eval-pydoc-val.json")
    print(f"\n== demo wall time {steps.elapsed() / 60:.1f} min")


def write_pydoc_topics(out: Path, heldout_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Python's documentation topics (shipped with Python) as one text file each, split by topic."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    random.Random(seed).shuffle(names)
    held_out = set(names[: max(1, round(len(names) * heldout_fraction))])
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {"train": [], "val": []}
    for name in sorted(topics):
        split = "val" if name in held_out else "train"
        path = out / split / f"{name}.txt"
        path.write_text(topics[name], encoding="utf-8")
        files[split].append(str(path.relative_to(out.parent.parent.parent)))
    return files["train"], files["val"]


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    steps = Steps(workdir)
    (shapes_demo if args.job == "shapes" else text_demo)(args, steps)
    return 0
