"""Report what privacy risks existing shards hold, without rewriting them: personal data and secrets in the text
(what --scrub-pii would replace), images with faces (what --blur-faces would blur), and duplicate clusters (what
`mmllm data dedup` would remove). A readable table on stdout, and JSON with --out.

Example: mmllm data scan data/web/train --out scan.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from mmllm.cli.data.dedup import add_duplicate_arguments, find
from mmllm.cli.data.options import KIND_HELP, shards_kind
from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DIR", help="the shards (a folder, brace pattern or .tar)")
    parser.add_argument("--kind", default=None, choices=("caption", "chat", "text"), help=KIND_HELP)
    parser.add_argument("--pii-region", default="US", metavar="CC[,CC]",
                        help="countries whose phone numbers may be written without a country code "
                                 "(default US; GB,DE,...; '' for international numbers only)")
    add_duplicate_arguments(parser)
    parser.add_argument("--out", default=None, metavar="FILE.json", help="write the report as JSON")


def run(args: argparse.Namespace) -> int:
    args.kind = shards_kind(args.data, args.kind)
    from data_pipelines.read.bad_samples import BadSampleHandler
    from data_pipelines.privacy.dedup import sample_id, sample_text
    from data_pipelines.privacy.faces import FaceBlurrer
    from data_pipelines.privacy.pii import PIIScrubber
    from data_pipelines.read.shards import read_samples

    try:
        scrubber, blurrer = PIIScrubber(region=args.pii_region), FaceBlurrer() if args.kind != "text" else None
    except (ImportError, ValueError) as error:
        raise UsageError(str(error)) from None
    handler = BadSampleHandler()
    pii, with_pii, faces, with_faces = Counter(), [], 0, []

    def inspected(samples):
        """Each sample counted for personal data and faces on its way to the duplicate search: one read."""
        nonlocal faces
        for sample in samples:
            _, counts = scrubber.scrub(sample_text(sample))
            if counts:
                pii.update(counts)
                with_pii.append(sample_id(sample))
            found = sum(len(blurrer.faces(image)) for image in sample.images) if blurrer else 0
            if found:
                faces += found
                with_faces.append(sample_id(sample))
            yield sample

    duplicates = find(args, inspected(read_samples(args.data, args.kind, handler)))
    report = {"data": args.data, "kind": args.kind, "samples": duplicates.samples,
              "pii": {"by_kind": dict(pii.most_common()), "samples": len(with_pii), "sample_ids": with_pii[:100]},
              "faces": {"faces": faces, "samples": len(with_faces), "sample_ids": with_faces[:100]},
              "duplicates": duplicates.to_dict(), "skipped_samples": dict(handler.counts)}
    print(format_scan(report))
    if handler.total:
        print(handler.summary(), file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def format_scan(report: dict) -> str:
    from mmllm.evaluation.report import format_table

    n = max(1, report["samples"])
    share = lambda count: f"{count} ({count / n * 100:.1f}%)"  # noqa: E731
    rows = [("samples with personal data or secrets", share(report["pii"]["samples"]))]
    rows += [(f"  {kind}", str(count)) for kind, count in report["pii"]["by_kind"].items()]
    if report["kind"] != "text":
        rows.append(("samples with faces", share(report["faces"]["samples"])))
    d = report["duplicates"]
    rows.append((f"duplicates (by {d['by']})", f"{share(d['duplicates'])} in {d['clusters']} clusters"))
    title = f"mmllm data scan  ({report['data']}, {report['samples']} {report['kind']} samples)"
    return f"{title}\n{format_table(rows, headers=('finding', 'samples'))}"
