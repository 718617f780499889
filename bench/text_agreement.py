"""How often mmllm's greedy chat answers equal llama.cpp's on the same weights, and why each other one differs:
SmolLM2-135M-Instruct read from its GGUF file by mmllm, and llama.cpp on the F32 copy its own quantizer writes.
The 20 questions and the comparison are tests/mmllm/formats/test_smollm2.py's (which asserts them); this prints
the count and, for every answer that parts, the step, both tokens and mmllm's top-2 logit margin there.

    python bench/text_agreement.py --out bench/results/2026-12-05-smollm2-agreement.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import write_report  # noqa: E402

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mmllm" / "formats"))
from test_smollm2 import GGUF, QUESTIONS, greedy_ids  # noqa: E402

from mmllm.formats.llama_cpp import LlamaCppText  # noqa: E402
from mmllm.formats.pretrained import read_language_model, text_only_model  # noqa: E402
from mmllm.inference import VisionLanguageModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmllm-vs-llama-cpp"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import llama_cpp

    f32 = args.work / "SmolLM2-135M-Instruct.F32.gguf"
    if not f32.is_file():
        args.work.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = llama_cpp.LLAMA_FTYPE_ALL_F32, True
        assert llama_cpp.llama_model_quantize(str(GGUF).encode(), str(f32).encode(), params) == 0
    pretrained = read_language_model(GGUF)
    model = text_only_model(pretrained)
    vlm = VisionLanguageModel(model, pretrained.tokenizer)
    runner = LlamaCppText(f32, n_ctx=512, n_threads=2)
    stops = list(pretrained.eos_token_ids)
    rows = []
    for question, (prompt, ours) in zip(QUESTIONS, greedy_ids(vlm, QUESTIONS, args.new_tokens)):
        theirs = runner.greedy(prompt, stops, args.new_tokens)
        ours = [t for t in ours if t not in stops]
        row = {"question": question, "answer": pretrained.tokenizer.decode(ours), "equal": ours == theirs}
        if not row["equal"]:
            step = next(i for i, (a, b) in enumerate(zip(ours + [-1], theirs + [-1])) if a != b)
            with torch.no_grad():
                logits = model(torch.tensor([prompt + ours[:step]])).logits[0, -1]
            top = logits.topk(2)
            row.update(step=step, llama_cpp_answer=pretrained.tokenizer.decode(theirs),
                       mmllm_token=pretrained.tokenizer.decode(ours[step:step + 1]),
                       llama_cpp_token=pretrained.tokenizer.decode(theirs[step:step + 1]),
                       top2_margin=round(float(top.values[0] - top.values[1]), 5))
        rows.append(row)
    runner.close()
    report = {"bench": "text_agreement", "date": time.strftime("%Y-%m-%d"), "model": GGUF.name,
              "llama_cpp_weights": "F32 (llama_model_quantize of the Q4_1 file)", "new_tokens": args.new_tokens,
              "agree": sum(r["equal"] for r in rows), "questions": len(rows), "rows": rows}
    write_report(report, args.out)


if __name__ == "__main__":
    main()
