"""llama.cpp against mmllm on one model: the greedy answers of its F16 and Q8_0 GGUF exports, run by llama.cpp
itself (llama-cpp-python), and of mmllm, on the questions of chat shards (each asked alone after its image).
Prints JSON: how often each GGUF answer equals mmllm's word for word, and the VQA accuracy of each.

Usage: python bench/gguf_agreement.py MODEL_DIR --data data/shapes/val/chat [--questions 500] [--gguf DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

from bench_common import machine  # noqa: E402
from data_pipelines.read.eval_samples import vqa_questions  # noqa: E402
from mmllm.evaluation.vqa_metric import vqa_accuracy  # noqa: E402
from mmllm.formats.gguf import TYPES, export_gguf, gguf_file_names  # noqa: E402
from mmllm.inference import load  # noqa: E402
from mmllm.formats.llama_cpp import LlamaCpp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True, help="chat shards (their questions are asked)")
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--gguf", default=None, help="a folder the model was exported to (default: export now)")
    args = parser.parse_args()

    vlm = load(args.model)
    questions = vqa_questions(args.data, limit=args.questions)
    start = time.perf_counter()
    ours = vlm.ask_many([q.image for q in questions], [q.question for q in questions],
                        max_new_tokens=args.max_new_tokens)
    results = {"model": args.model, "data": args.data, "questions": len(questions), "machine": machine(torch.device("cpu")),
               "mmllm": {"vqa_accuracy": sum(vqa_accuracy(a, [q.answer]) for a, q in zip(ours, questions))
                         / len(questions), "seconds": round(time.perf_counter() - start, 1)}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.gguf or scratch)
        if args.gguf is None:
            export_gguf(vlm.model, vlm.tokenizer, vlm.config, folder)
        images = Path(scratch) / "images"
        images.mkdir()
        paths = []
        for index, question in enumerate(questions):
            paths.append(images / f"{index}.png")
            question.image.save(paths[-1])
        for kind in TYPES:
            model_file, projector_file = gguf_file_names(kind)
            runner = LlamaCpp(folder / model_file, folder / projector_file)
            start = time.perf_counter()
            answers = []
            for question, path in zip(questions, paths):
                ids = runner.answer(runner.question_prompt(vlm.config.chat_template, question.question), [path],
                                    list(vlm.config.eos_token_ids), args.max_new_tokens)
                answers.append(vlm.tokenizer.decode(ids, skip_special_tokens=True).strip())
            runner.close()
            results[kind] = {
                "agreement_with_mmllm": sum(a == b for a, b in zip(answers, ours)) / len(questions),
                "vqa_accuracy": sum(vqa_accuracy(a, [q.answer]) for a, q in zip(answers, questions)) / len(questions),
                "seconds": round(time.perf_counter() - start, 1),
                "size_mb": round(((folder / model_file).stat().st_size + (folder / projector_file).stat().st_size)
                                 / 2**20, 2),
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
