"""Convert (source, target) pairs in JSON lines into text-only chat shards for sequence-to-sequence learning.

Each row `{"en": "...", "de": "...", ...}` becomes a one-turn chat (LLaVA's layout, docs/formats.md): the user turn
is the template with `{source}` replaced by the source field, the assistant turn is the target field. The loss
falls on assistant turns only, so training learns the target given the source; with `model.attention: prefix`
the user turn is read bidirectionally (UniLM's and T5-as-decoder's mask). The row's other scalar fields (an id,
the program a message came from) are kept in KEY.json, and `mmllm eval --task seq2seq` copies them to its samples.

Rows that cannot train are counted by reason and skipped: a line that is not UTF-8 or not JSON, a missing or
empty field, a field that is not text, a pair longer than `max_length` characters (prompt plus target).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from data_pipelines.convert.writers import DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE, ShardWriter, WriteStats

SOURCE_SLOT = "{source}"


class SkipPair(Exception):
    """A row that cannot become a training pair; the message is the reason counted in the summary."""


def check_template(template: str) -> None:
    """ValueError unless the template names the source exactly once."""
    if template.count(SOURCE_SLOT) != 1:
        raise ValueError(f"the template must contain {SOURCE_SLOT} exactly once, got {template!r}")


def pair_conversation(source: str, target: str, template: str = SOURCE_SLOT) -> list[dict]:
    """The chat turns of one pair: the user asks the templated source, the assistant answers the target."""
    return [{"from": "human", "value": template.replace(SOURCE_SLOT, source)}, {"from": "gpt", "value": target}]


def read_lines(path: str | os.PathLike) -> Iterator[dict | SkipPair]:
    """The JSON objects of a JSON lines file, line by line; a line that cannot be one yields SkipPair."""
    with open(path, "rb") as file:
        for raw in file:
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                yield SkipPair("not utf-8")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                yield SkipPair("bad json line")
                continue
            yield row if isinstance(row, dict) else SkipPair("bad row")


def _text_field(row: dict, name: str) -> str:
    if name not in row:
        raise SkipPair("missing field")
    value = row[name]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SkipPair("empty field")
    if not isinstance(value, str):
        raise SkipPair("field not text")
    try:
        value.encode("utf-8")  # a JSON escape of a lone surrogate ("\ud800") decodes but is no UTF-8 text
    except UnicodeEncodeError:
        raise SkipPair("not utf-8") from None
    return value.strip()


def row_pair(row: dict, source_field: str, target_field: str, template: str,
             max_length: int | None) -> tuple[list[dict], dict[str, Any]]:
    """(turns, metadata) of one row; SkipPair with the reason when it cannot train."""
    source, target = _text_field(row, source_field), _text_field(row, target_field)
    turns = pair_conversation(source, target, template)
    if max_length is not None and len(turns[0]["value"]) + len(target) > max_length:
        raise SkipPair("too long")
    meta = {k: v for k, v in row.items() if k not in (source_field, target_field, "conversations")
            and (v is None or isinstance(v, (str, int, float, bool)))}
    return turns, meta


def convert_pairs(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    source_field: str,
    target_field: str,
    template: str = SOURCE_SLOT,
    max_length: int | None = None,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    overwrite: bool = False,
    report=print,
    scrub=None,
) -> WriteStats:
    """Write the pairs of the JSON lines file `path` as chat shards in `out_dir`.

    Keys are the line's index among the file's non-empty lines, so skipping a row never renames the others.
    """
    check_template(template)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with ShardWriter(out_dir, maxcount=maxcount, maxsize=maxsize, overwrite=overwrite, report=report,
                     scrub=scrub) as writer:
        for index, row in enumerate(read_lines(path)):
            try:
                if isinstance(row, SkipPair):
                    raise row
                turns, meta = row_pair(row, source_field, target_field, template, max_length)
                writer.write_chat(turns, key=f"{index:09d}", meta=meta)
            except SkipPair as reason:
                writer.skip(str(reason))
    return writer.stats
