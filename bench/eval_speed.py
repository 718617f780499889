"""How fast `mmllm eval --task vqa` answers questions: prints JSON (questions, seconds, questions per second).

Run by hand: python bench/eval_speed.py [--model DIR] [--images 500] [--threads 1] [--batch-size 64]
Without --model it times an untrained tiny model built here, which never stops early, so every answer costs
the full --max-new-tokens (the worst case). Shapes scenes carry 4 questions each.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder (default: an untrained tiny model)")
    parser.add_argument("--images", type=int, default=500, help="shapes scenes to ask about (4 questions each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from data_pipelines.chat.special_tokens import TokenIds
    from data_pipelines.chat.tokenizer import train_tokenizer, vocab_size
    from data_pipelines.convert.shapes import generate_split
    from data_pipelines.read.eval_samples import vqa_questions
    from data_pipelines.read.shards import find_shards, shard_texts
    from mmllm.config import VLMConfig
    from mmllm.formats.model_folder import save_model_folder
    from mmllm.inference import load
    from mmllm.model import VLM

    with tempfile.TemporaryDirectory() as tmp:
        generate_split(tmp, "val", args.images, report=lambda *_: None)
        model = args.model
        if model is None:
            tokenizer = train_tokenizer(shard_texts(find_shards([tmp])), vocab_size=400)
            ids = TokenIds.from_tokenizer(tokenizer)
            config = VLMConfig.from_preset("tiny").with_tokenizer_ids(vocab_size(tokenizer), ids.image, ids.pad,
                                                                      ids.eos_ids)
            torch.manual_seed(0)
            model = save_model_folder(VLM(config), tokenizer, Path(tmp) / "model")
        vlm = load(model, device="cpu")
        start = time.perf_counter()
        questions = vqa_questions(Path(tmp) / "val" / "chat")
        read = time.perf_counter() - start
        vlm.ask_many([q.image for q in questions], [q.question for q in questions], batch_size=args.batch_size,
                     max_new_tokens=args.max_new_tokens)
        seconds = time.perf_counter() - start
    print(json.dumps({
        "questions": len(questions), "seconds": round(seconds, 2), "reading_seconds": round(read, 2),
        "questions_per_second": round(len(questions) / seconds, 1), "threads": args.threads,
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "model": args.model or "untrained tiny (full-length answers)",
    }))


if __name__ == "__main__":
    main()
