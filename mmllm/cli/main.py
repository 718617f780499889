"""Entry point of the `mmllm` command: dispatches subcommands to their modules.

Each command module defines `add_arguments(parser)` and `run(args) -> int | None`; modules are imported
only when their command runs, so `mmllm caption` never pays for Lightning's import. `fit`, `validate` and
`test` hand their arguments to LightningCLI unchanged.

Why two ways to declare arguments: training is configured by YAML files whose every section (model, data,
trainer, callbacks) LightningCLI derives from the classes' typed signatures, with config files, overrides
and `--print_config` for free; the other commands take a few flags, start in a fraction of a second (no
Lightning, jsonargparse or torch import before they are needed) and keep argparse's help layout. Within each
system there is one way: argparse commands share their option groups (model_options, data_options).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from mmllm.errors import UsageError

# subcommand -> module under mmllm.cli (or a nested table for command groups)
COMMANDS: dict[str, str | dict[str, str]] = {
    "data": {
        "shapes": "data.shapes",
        "from-llava": "data.from_llava",
        "from-folder": "data.from_folder",
        "from-text": "data.from_text",
        "from-pairs": "data.from_pairs",
        "from-preferences": "data.from_preferences",
        "from-videos": "data.from_videos",
        "canaries": "data.canaries",
        "dedup": "data.dedup",
        "scan": "data.scan",
    },
    "audit": {"memorization": "audit_memorization"},
    "tokenizer": {"train": "tokenizer_train"},
    "build": "build",
    "export": "export",
    "prune": "prune",
    "caption": "caption",
    "ask": "ask",
    "chat": "chat",
    "generate": "generate",
    "fill-mask": "fill_mask",
    "eval": "evaluate",
    "plot": "plot",
    "serve": "serve",
    "demo": "demo",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, whole however many lines it spans (the command list of
    `mmllm --help`)."""
    paragraph = " ".join(doc.split("\n\n", 1)[0].split())
    end = re.search(r"[.!?](\s|$)", paragraph)
    return paragraph[:end.start() + 1] if end else paragraph


def _command_module(name: str):
    return importlib.import_module(f"mmllm.cli.{name}")


def _add_command(subparsers, name: str, module_name: str) -> None:
    module = _command_module(module_name)
    doc = (module.__doc__ or "").strip()
    parser = subparsers.add_parser(
        name, help=first_sentence(doc) or None, description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)


def build_parser(argv: list[str]) -> OneLineParser:
    """The parser, loading only the command module that argv names (all of them for --help)."""
    parser = OneLineParser(prog="mmllm", description="Build, train, evaluate and run small vision-language models.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    for name, target in COMMANDS.items():
        if isinstance(target, dict):
            group = subparsers.add_parser(name, help=f"{name} commands")
            group_sub = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=OneLineParser)
            group_sub.required = True
            for sub_name, module_name in target.items():
                if wanted in (None, name):
                    _add_command(group_sub, sub_name, module_name)
        elif wanted in (None, name):
            _add_command(subparsers, name, target)
        else:
            subparsers.add_parser(name)
    for name in LIGHTNING_COMMANDS:
        subparsers.add_parser(name, help=f"LightningCLI {name} (see mmllm {name} --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from mmllm.train.cli import run_lightning_cli

        return run_lightning_cli(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UsageError as error:
        print(f"mmllm: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a quota, no permission: the file, and that what was there is intact
        where = f" ({error.filename})" if error.filename else ""
        print(f"mmllm: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
