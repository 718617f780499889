"""Draw a training run's learning curves, or an eval report's accuracies, as PNG files (needs matplotlib).

A run folder (anything holding a CSVLogger metrics.csv, e.g. runs/shapes-tiny) gives RUN/curves.png: loss per
data kind, learning rates and VQA accuracy during training. A VQA report (mmllm eval --out FILE.json) gives
FILE.png: accuracy per question type for each turns mode and a confusion matrix of the answers.
Example: mmllm plot runs/shapes-tiny runs/eval-val.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmllm.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR|REPORT.json", help="run folders and VQA reports")


def run(args: argparse.Namespace) -> int:
    from mmllm.evaluation.plots import plot_report, plot_run

    for path in map(Path, args.paths):
        if not path.exists():
            raise UsageError(f"no such file or folder: {path}")
        try:
            written = plot_run(path) if path.is_dir() else plot_report(path)
        except ImportError as error:
            raise UsageError(str(error)) from None
        except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as error:
            raise UsageError(f"{path}: cannot plot it: {error}") from None
        print(f"wrote {written}")
    return 0
