"""Convert LLaVA-style conversation files (JSON list or JSON lines) into chat shards.

Rows are LLaVA `{"id", "image"?, "conversations": [{"from": "human"|"gpt"|"system", "value"}]}` or
OpenAI-style `{"messages": [{"role", "content"}], "image"?}`; both are written in LLaVA's layout
(docs/formats.md): KEY.json `{"conversations": [...], "id": ...}` plus the image bytes. Multi-turn
conversations are kept whole; a row without an image becomes a text-only chat. Rows that cannot train
(missing or unreadable image, no assistant turn, markers that do not match the images) are counted by
reason and skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from data_pipelines.chat.conversation import content_of_parts
from data_pipelines.chat.special_tokens import IMAGE_MARKER
from data_pipelines.convert.writers import DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE, ShardWriter, WriteStats
from data_pipelines.images import ImageError
from data_pipelines.read.bad_samples import reason_of

# every spelling of a speaker seen in LLaVA and OpenAI files -> the LLaVA "from" value written to shards
SPEAKERS = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}


class SkipRow(Exception):
    """A row that cannot become a training sample; the message is the reason counted in the summary."""


def read_rows(path: str | os.PathLike) -> Iterator[Any]:
    """Rows of a JSON list, a single JSON object, or JSON lines; an unparsable line yields SkipRow."""
    text = Path(path).read_text(encoding="utf-8-sig")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list):
        yield from whole
        return
    if isinstance(whole, dict):
        yield whole
        return
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            yield SkipRow("bad json line")


def _content_text(content: Any) -> str:
    """OpenAI content: a string, or a list of parts where image parts become the <image> marker."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise SkipRow("bad turn")
    try:
        return content_of_parts(content)  # the chat template's own reading of content parts
    except ValueError:
        raise SkipRow("bad turn") from None


def llava_turns(row: dict) -> list[dict]:
    """The row's conversation as LLaVA turns [{"from": "human"|"gpt"|"system", "value": str}]."""
    if isinstance(row.get("conversations"), list):
        raw = [(turn.get("from"), turn.get("value")) if isinstance(turn, dict) else (None, None)
               for turn in row["conversations"]]
    elif isinstance(row.get("messages"), list):
        raw = [(turn.get("role"), turn.get("content")) if isinstance(turn, dict) else (None, None)
               for turn in row["messages"]]
    else:
        raise SkipRow("no conversation")
    turns = []
    for speaker, value in raw:
        if speaker not in SPEAKERS or value is None:
            raise SkipRow("bad turn")
        turns.append({"from": SPEAKERS[speaker], "value": _content_text(value)})
    if not any(turn["from"] == "gpt" for turn in turns):
        raise SkipRow("no assistant turn")
    return turns


def image_paths(row: dict) -> list[str]:
    """Relative image paths a row names in "image" (string or list) or "images"."""
    value = row.get("image", row.get("images"))
    if value is None or value == "":
        return []
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(path, str) and path for path in paths):
        raise SkipRow("bad image field")
    return paths


def place_image_marker(turns: list[dict], image_count: int) -> list[dict]:
    """Check the <image> markers against the images; a row with one image and no marker gets it in front
    of its first human turn (LLaVA's own convention)."""
    markers = sum(turn["value"].count(IMAGE_MARKER) for turn in turns)
    if image_count == 0 and markers:
        raise SkipRow("image marker without image")
    if image_count == 1 and markers == 0:
        first_human = next((i for i, turn in enumerate(turns) if turn["from"] == "human"), None)
        if first_human is None:
            raise SkipRow("no user turn")
        turns = [dict(turn) for turn in turns]
        turns[first_human]["value"] = f"{IMAGE_MARKER}\n{turns[first_human]['value']}"
    elif image_count == 1 and markers != 1:
        raise SkipRow("image markers do not match images")
    return turns


def convert_llava(
    annotations: str | os.PathLike,
    images_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    overwrite: bool = False,
    report=print,
    scrub=None,
    blur=None,
) -> WriteStats:
    """Write the rows of `annotations` as chat shards in `out_dir`; image paths are relative to `images_dir`.

    Keys are the row's index in the file (zero-padded), so skipping a row never renames the others; the
    row's "id" is kept in KEY.json.
    """
    images_root = Path(images_dir) if images_dir is not None else None
    with ShardWriter(out_dir, maxcount=maxcount, maxsize=maxsize, overwrite=overwrite, report=report,
                     scrub=scrub, blur=blur) as writer:
        for index, row in enumerate(read_rows(annotations)):
            try:
                if isinstance(row, SkipRow):
                    raise row
                if not isinstance(row, dict):
                    raise SkipRow("bad row")
                paths = image_paths(row)
                if len(paths) > 1:
                    raise SkipRow("several images")  # the chat shard layout holds one image per sample
                turns = place_image_marker(llava_turns(row), len(paths))
                image = _read_image(images_root, paths[0]) if paths else None
                meta = {"id": row["id"]} if "id" in row else {}
                writer.write_chat(turns, image=image, key=f"{index:09d}", meta=meta)
            except SkipRow as reason:
                writer.skip(str(reason))
            except ImageError as error:
                writer.skip(reason_of(error))
    return writer.stats


def _read_image(images_root: Path | None, relative: str) -> bytes:
    if images_root is None:
        raise SkipRow("missing image")
    path = images_root / relative
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise SkipRow("missing image") from None
