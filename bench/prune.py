"""Decode speed of a pruned preset against the full one: does cutting heads, channels and layers buy time in
proportion to the parameters it removes?

    python bench/prune.py                                  # small, 1/3 of the heads and 30% of the channels
    python bench/prune.py --preset small --attention-heads 0.34 --mlp-channels 0.5 --layers 4

Random weights and random importance scores (speed depends on the shapes, not on which heads go). Batch 1, one
image + 64 prompt tokens, 64 new greedy tokens through the KV cache; the full and the pruned model are timed in
turns, `--repeats` times each, and the best of each is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_common as common  # noqa: E402
from generate import make_prompt  # noqa: E402

from mmllm.config import VLMConfig  # noqa: E402
from mmllm.model.generation import stream  # noqa: E402
from mmllm.model import VLM  # noqa: E402
from mmllm.compress.pruning import Importance, lm_parameters, plan, prune  # noqa: E402


def decode_tokens_per_s(model: VLM, new_tokens: int) -> float:
    ids, pixels = make_prompt(model, 1, 64, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        steps = stream(model, ids, pixel_values=pixels, max_new_tokens=new_tokens, stop_ids=[])
        next(steps)
        start = time.perf_counter()
        produced = sum(1 for _ in steps)
        return produced / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--attention-heads", type=float, default=0.34)
    parser.add_argument("--mlp-channels", type=float, default=0.3)
    parser.add_argument("--layers", type=int, default=0)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    full = VLM(VLMConfig.from_preset(args.preset)).eval()
    c = full.config.lm
    scores = Importance(torch.rand(c.n_layers, c.n_heads), torch.rand(c.n_layers, c.mlp_dim), torch.rand(c.n_layers), 1)
    pruned = prune(full, plan(full.config, scores, args.attention_heads, args.mlp_channels, args.layers))
    speeds = {"full": [], "pruned": []}
    decode_tokens_per_s(full, 4), decode_tokens_per_s(pruned, 4)  # warm-up
    for _ in range(args.repeats):
        for name, model in (("full", full), ("pruned", pruned)):
            speeds[name].append(decode_tokens_per_s(model, args.new_tokens))
    best = {name: max(values) for name, values in speeds.items()}
    params = {"full": lm_parameters(full), "pruned": lm_parameters(pruned)}
    print(json.dumps({
        "bench": "prune",
        "machine": {**common.machine(torch.device("cpu")), "threads": args.threads},
        "preset": args.preset,
        "shares": {"attention_heads": args.attention_heads, "mlp_channels": args.mlp_channels, "layers": args.layers},
        "lm_shape": {name: {"n_layers": m.config.lm.n_layers, "n_heads": m.config.lm.n_heads,
                            "mlp_dim": m.config.lm.mlp_dim} for name, m in (("full", full), ("pruned", pruned))},
        "lm_parameters": params,
        "lm_parameters_removed": round(1 - params["pruned"] / params["full"], 4),
        "decode_tokens_per_s": {name: round(v, 2) for name, v in best.items()},
        "decode_speedup": round(best["pruned"] / best["full"], 3),
        "all_runs": {name: [round(v, 2) for v in values] for name, values in speeds.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
