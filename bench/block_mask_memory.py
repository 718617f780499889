"""Peak memory of building the attention mask of packed rows: the dense (B, 1, T, T) boolean mask against
flex_attention's BlockMask, built eagerly and compiled (mmllm.model.document_mask). Each way runs in a fresh
process; the figure is the growth of peak RSS over the process's RSS just before building (torch's CPU
allocations), with the build time.

    python bench/block_mask_memory.py --length 8192 --out bench/results/DATE-block-mask-memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import write_report  # noqa: E402

WAYS = ("dense", "block mask, eager", "block mask, compiled")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def build(way: str, length: int, segments: int) -> dict:
    import torch

    from mmllm.model import document_mask
    from mmllm.model.vlm import build_attention_mask

    # one packed row of `segments` samples of equal length (segment ids 1..k), no padding
    segment_ids = (torch.arange(length) * segments // length + 1)[None]
    compile_growth = None
    if way == "block mask, compiled":  # compile first, on another row of the same length: building is measured
        other = (torch.arange(length) * (segments + 1) // length + 1)[None]
        start_peak = rss_mib()
        document_mask.document_block_mask(length, None, other, None, torch.device("cpu"), compiled=True)
        compile_growth = round(max(0.0, rss_mib() - start_peak), 1)  # compiling, once per length
    before_peak, before = rss_mib(), current_rss_mib()
    start = time.perf_counter()
    if way == "dense":
        mask = build_attention_mask(length, None, segment_ids, None)
    else:
        mask = document_mask.document_block_mask(length, None, segment_ids, None, torch.device("cpu"),
                                                 compiled=way.endswith("compiled"))
    seconds = time.perf_counter() - start
    grown = max(0.0, rss_mib() - max(before_peak, before))
    result = {"peak_growth_mib": round(grown, 1), "seconds": round(seconds, 3), "type": type(mask).__name__}
    if compile_growth is not None:
        result["compiling_peak_growth_mib"] = compile_growth
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(build(args.one, args.length, args.segments)))
        return
    results = {}
    for way in WAYS:
        command = [sys.executable, __file__, "--one", way, "--length", str(args.length), "--segments",
                   str(args.segments)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[way] = json.loads(output.strip().splitlines()[-1])
    import torch

    write_report({"bench": "block_mask_memory", "date": time.strftime("%Y-%m-%d"), "length": args.length,
                  "segments": args.segments, "dense_mask_mib": round(args.length ** 2 / 2**20, 1),
                  "torch": torch.__version__, "results": results}, args.out)


if __name__ == "__main__":
    main()
