"""A mistake in a `mmllm fit` config or override, said in one line: the unknown key and the valid keys closest to it,
instead of jsonargparse's usage block (116 lines) followed by its message.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import typing
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

# jsonargparse's ways of saying that a key is not known: an override (`--model.lrr 1e-3`), a YAML key
# (`data: {batchsize: 8}`), a key inside a typed option (`--model.lora.rnak 3`: 'Parser key "model.lora" ...
# Unexpected keys: {'rnak'}').
UNRECOGNISED = re.compile(r"unrecognized arguments: --?([\w.]+)")
NOT_ACCEPTED = re.compile(r"does not accept (?:nested )?(?:option|key)s? '([\w.]+)'")
PARENT_KEY = re.compile(r'Parser key "([\w.]+)"')
CLASS_PATH_PROBLEM = re.compile(r"^Problem with given class_path '[\w.]+': ")
UNEXPECTED = re.compile(r"Unexpected keys?: \{'([\w.]+)'")


class OneLineArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose final error (status 2) is one line naming the bad key and what it may have meant.
    Errors raised while jsonargparse tries alternatives (exit_on_error off) pass through untouched."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = parser.prog.replace(" [options]", "")
        print(f"{command}: error: {describe(message, parser)}", file=sys.stderr)
        raise SystemExit(2)


def describe(message: str, parser: Any) -> str:
    """One line for jsonargparse's `message`: the unknown key with up to three close valid keys, or the message's
    own lines joined."""
    key, valid = unknown_key(message, parser)
    if key is None:
        text, parent = one_line(message), PARENT_KEY.search(message)
        if parent and parent.group(1) not in text:  # the check alone would not say which key it is about
            text = f"{parent.group(1)}: {text}"
        return text[:400]
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else f" (see {parser.prog.replace(' [options]', '')} --help)"
    return f"unknown config key {key}{hint}"


def one_line(message: str) -> str:
    """jsonargparse's message in one line. A typed option's own check (a dataclass's __post_init__,
    `data.balance.mode`) comes wrapped in "Does not validate against any of the Union subtypes ... Errors:
    - THE CHECK (and its indented lines) - Expected a NoneType ...": the check is what is said."""
    raw = [line for line in message.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(raw) if line.strip() == "Errors:"), None)
    if start is not None:
        items: list[list[str]] = []  # each "- " item with the lines indented below it
        indent = None
        for line in raw[start + 1:]:
            depth = len(line) - len(line.lstrip())
            if line.lstrip().startswith("- ") and (indent is None or depth == indent):
                indent = depth
                items.append([line.strip()[2:]])
            elif indent is not None and depth > indent:
                items[-1].append(line.strip())
            else:
                break
        checks = [" ".join(item) for item in items if not item[0].startswith("Expected a <class 'NoneType'>")]
        if checks:
            return CLASS_PATH_PROBLEM.sub("", checks[0])
    return " ".join(line.strip() for line in raw)


def unknown_key(message: str, parser: Any) -> tuple[str | None, list[str]]:
    """(the dotted key the message says is unknown, the valid keys in its place) or (None, [])."""
    for pattern in (UNRECOGNISED, NOT_ACCEPTED):
        found = pattern.search(message)
        if found:
            return found.group(1), option_keys(parser)
    parent, inner = PARENT_KEY.search(message), UNEXPECTED.search(message)
    if parent and inner:
        fields = typed_fields(parser, parent.group(1))
        return f"{parent.group(1)}.{inner.group(1)}", [f"{parent.group(1)}.{name}" for name in fields]
    return None, []


def option_keys(parser: Any) -> list[str]:
    """Every dotted key the parser takes (`model.lr`, `data.batch_size`, `trainer.max_steps`, ...)."""
    return [action.dest for action in parser._actions if action.dest and action.dest not in ("help", "config")]


def typed_fields(parser: Any, key: str) -> list[str]:
    """The field names of the dataclass or TypedDict an option is typed with (`model.lora`: Optional[LoRAOptions])."""
    action = next((action for action in parser._actions if action.dest == key), None)
    hint = getattr(action, "_typehint", None)
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return [field.name for field in dataclasses.fields(candidate)]
        if typing.is_typeddict(candidate):
            return list(typing.get_type_hints(candidate))
    return []
