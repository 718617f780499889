"""Measure what a model repeats of its training data: verbatim regurgitation, and canary exposure.

Verbatim: the share of TRAIN samples that greedy decoding reproduces exactly (a caption from its image, a chat's
first answer, a document's next 16 words), beside the same share on HELDOUT samples of the same distribution: the
gap is memorisation, not skill. Exposure: for shards written by `mmllm data canaries` (their canaries.json), each
secret's rank among --candidates random secrets of its format, in the context of a sample that carried it, as
log2(R + 1) - log2(rank) bits per repetition count (Carlini et al. 2019), read against control secrets ranked
in the same contexts but never written into the data (--controls per canary): a model is not a uniform ranker,
so what an unseen secret shows is measured, not assumed. Each count reports the share of controls ranked at least
as high as its canaries, with an interval (ties counted: about 0.5 when nothing was learnt, near 0 when memorised).

Example: mmllm audit memorization --model models/shapes-tiny --train data/canaried/train --heldout data/shapes/val/captions
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from mmllm.cli.data.options import shards_kind
from mmllm.cli.model_options import add_model_arguments, load_model
from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--train", required=True, metavar="DIR", help="the training shards (caption, chat or text)")
    parser.add_argument("--heldout", required=True, metavar="DIR", help="held-out shards of the same kind")
    parser.add_argument("--kind", choices=("caption", "chat", "text"), default=None,
                        help="the shards' kind (default: the canary manifest's, else read from the shards)")
    parser.add_argument("--limit", type=int, default=200, metavar="N",
                        help="samples of each side tested for regurgitation (default 200)")
    parser.add_argument("--canaries", default=None, metavar="FILE",
                        help="the canary manifest (default: TRAIN/canaries.json when there is one)")
    parser.add_argument("--candidates", type=int, default=255, metavar="R",
                        help="random secrets each canary is ranked against (default 255: at most 8 bits)")
    parser.add_argument("--controls", type=int, default=2, metavar="K",
                        help="control secrets (never in the data) ranked in each canary's context (default 2)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B")
    parser.add_argument("--out", default=None, metavar="REPORT.json", help="write the report as JSON")


def run(args: argparse.Namespace) -> int:
    from data_pipelines.read.bad_samples import BadSampleHandler
    from data_pipelines.privacy.canaries import MANIFEST, CanaryManifest, carriers
    from data_pipelines.read.shards import decode_samples, read_samples
    from mmllm.evaluation import memorization as mem

    if args.limit < 1 or args.candidates < 1 or args.batch_size < 1 or args.controls < 0:
        raise UsageError("--limit, --candidates and --batch-size must be at least 1, --controls at least 0")
    manifest_path = Path(args.canaries) if args.canaries else Path(args.train) / MANIFEST
    if args.canaries and not manifest_path.is_file():
        raise UsageError(f"--canaries {args.canaries}: no such file")
    try:
        manifest = CanaryManifest.load(manifest_path) if manifest_path.is_file() else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    kind = shards_kind(args.train, args.kind or (manifest.kind if manifest else None))
    shards_kind(args.heldout, kind)
    if manifest and manifest.kind != kind:
        raise UsageError(f"--kind {kind} but the canaries were written into {manifest.kind} samples")
    vlm = load_model(args)
    handler = BadSampleHandler()
    carrying = carriers(manifest) if manifest else {}

    def first(path: str, exclude: set[str]) -> list:
        try:
            samples = read_samples(path, kind, handler)
            chosen = []
            for sample in samples:
                if sample.key not in exclude and mem.long_enough(sample):
                    chosen.append(sample)
                    if len(chosen) == args.limit:
                        break
            return chosen
        except FileNotFoundError as error:
            raise UsageError(f"{path}: {error}") from None

    report: dict = {"model": args.model, "train": args.train, "heldout": args.heldout, "kind": kind}
    sides = {"train": first(args.train, set(carrying)), "heldout": first(args.heldout, set())}
    if not sides["train"] or not sides["heldout"]:
        empty = "train" if not sides["train"] else "heldout"
        raise UsageError(f"--{empty} has no usable {kind} samples")
    verbatim = {}
    for side, samples in sides.items():
        produced, references = mem.reproductions(vlm, samples, batch_size=args.batch_size)
        verbatim[side] = {"share": mem.verbatim_share(produced, references), "samples": len(samples)}
    verbatim["gap"] = verbatim["train"]["share"] - verbatim["heldout"]["share"]
    report["verbatim"] = verbatim
    if manifest:
        # only the few carriers' images decoded; their bad samples were counted above already
        again = BadSampleHandler()
        wanted = (s for s in read_samples(args.train, kind, again, decode=False) if s.key in carrying)
        found = {s.key: s for s in decode_samples(wanted, again)}
        try:
            results = mem.canary_exposures(vlm, manifest, found, candidates=args.candidates,
                                           batch_size=args.batch_size, controls=args.controls)
        except ValueError as error:
            raise UsageError(str(error)) from None
        report["canaries"] = {"candidates": args.candidates, "format": manifest.format, "controls": args.controls,
                              "by_repeats": mem.exposure_by_repeats(results),
                              "each": [vars(r) for r in results]}
    report["skipped_samples"] = dict(handler.counts)
    print(format_audit(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def format_audit(report: dict) -> str:
    from mmllm.evaluation.report import format_table

    v = report["verbatim"]
    rows = [(f"verbatim {side}", f"{v[side]['share'] * 100:.1f}%", str(v[side]["samples"]))
            for side in ("train", "heldout")]
    rows.append(("verbatim gap (memorisation)", f"{v['gap'] * 100:+.1f} pts", ""))
    lines = [f"mmllm audit memorization  (model: {report['model']}, {report['kind']} samples)",
             format_table(rows, headers=("measure", "value", "n"))]
    canaries = report.get("canaries")
    if canaries:
        top = f"{math.log2(canaries['candidates'] + 1):.1f}"
        rows = []
        for count, row in canaries["by_repeats"].items():
            low, high = row["ci95"]
            as_exposed = ""
            if "p_control_at_least_as_exposed" in row:
                p_low, p_high = row["p_control_at_least_as_exposed_ci95"]
                as_exposed = f"{row['p_control_at_least_as_exposed']:.2f} ({p_low:.2f}-{p_high:.2f})"
            rows.append((f"{count}x" if int(count) else "control (unseen)", f"{row['mean_bits']:.2f}",
                         f"{low:.2f}-{high:.2f}", f"{row['max_bits']:.2f}", str(row["canaries"]), as_exposed))
        lines += [f"canary exposure in bits (at most {top} with {canaries['candidates']} candidates; a count whose "
                  "interval overlaps the control's is not told apart from chance)",
                  format_table(rows, headers=("repeats", "mean", "95% interval", "max", "secrets",
                                              "controls as exposed (95%)")),
                  "controls as exposed: the mean share of controls ranked at or above a canary, ties counted "
                  "(about 0.5 by chance; a count whose interval lies below 0.5 reads as memorised)"]
    return "\n".join(lines)
