"""Every `mmllm` command in the README and docs/ names a real command with options it accepts, as written: the
argparse commands go through mmllm's own parser (nothing runs), and `fit`/`validate`/`test` name config files
that exist and that LightningCLI parses with the command's overrides (`--print_config`, nothing trains).

Placeholders in upper case (MODEL, IMAGES, DIR) stand for the user's files; a command is checked for its shape,
not run, so they need not exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from commands import REPO

from mmllm.cli.main import LIGHTNING_COMMANDS, build_parser

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)  # (language, text) of each fenced block


def documented_commands(page: Path) -> list[list[str]]:
    """The argv of every line of a fenced block that runs `mmllm` (continuations joined, comments dropped)."""
    commands = []
    for language, block in BLOCK.findall(page.read_text(encoding="utf-8")):
        if language not in ("", "bash", "sh", "console"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            if not re.search(r"(^|[\s/])mmllm\s", line):  # output shown in a block, or another program
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            command: list[str] = []
            for word in [*lexer, ";"]:  # `a && b; c | d`: each command of a line, quotes respected
                if word.strip("&;|<>()"):
                    command.append(word)
                    continue
                if command and Path(command[0]).name == "mmllm":
                    commands.append(command[1:])
                command = []
    return commands


COMMANDS = [(page.relative_to(REPO).as_posix(), argv) for page in PAGES for argv in documented_commands(page)]


def test_the_pages_hold_commands_to_check():
    pages = {page for page, _ in COMMANDS}
    assert "README.md" in pages and len(pages) >= 5 and len(COMMANDS) >= 30


@pytest.mark.parametrize("page, argv", [c for c in COMMANDS if c[1][0] not in LIGHTNING_COMMANDS],
                         ids=lambda value: " ".join(value)[:60] if isinstance(value, list) else value)
def test_a_documented_command_parses_as_written(page, argv):
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as error:  # argparse's exit 2 on an unknown command, option or choice
        pytest.fail(f"{page}: `mmllm {shlex.join(argv)}` does not parse (exit {error.code})")
    assert getattr(args, "_run", None) is not None, f"{page}: `mmllm {shlex.join(argv)}` names no command"


LIGHTNING = [c for c in COMMANDS if c[1][0] in LIGHTNING_COMMANDS]


def test_every_documented_fit_names_configs_that_exist():
    assert LIGHTNING
    for page, argv in LIGHTNING:
        configs = [argv[i + 1] for i, word in enumerate(argv) if word == "--config"]
        assert configs, f"{page}: `mmllm {shlex.join(argv)}` names no --config"
        for config in configs:
            if config.startswith("configs/"):  # the project's own; others are the user's second files
                assert (REPO / config).is_file(), f"{page}: {config} does not exist"


@pytest.mark.slow
def test_documented_fits_with_the_projects_configs_parse_in_lightning_cli(monkeypatch, capsys):
    """`--print_config` with the documented overrides: LightningCLI checks every key and type, then exits (in this
    process, from the repository root, as the docs' relative paths assume)."""
    from mmllm.cli.main import main

    monkeypatch.chdir(REPO)
    checked = 0
    for page, argv in LIGHTNING:
        configs = [argv[i + 1] for i, word in enumerate(argv) if word == "--config"]
        if argv[0] != "fit" or not all(c.startswith("configs/") for c in configs):
            continue
        with pytest.raises(SystemExit) as stopped:
            main([*argv, "--print_config"])
        printed = capsys.readouterr()
        assert stopped.value.code in (0, None), f"{page}: `mmllm {shlex.join(argv)}`: {printed.err.strip()[-400:]}"
        checked += 1
    assert checked >= 3
