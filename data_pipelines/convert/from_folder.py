"""Convert a folder of images and a captions file (JSON lines or CSV) into caption shards.

The captions file has one row per (image, caption): JSON lines `{"file"|"image": ..., "caption"|"text": ...}`
or a CSV whose header names those columns. Rows of the same image are grouped: the first caption becomes
KEY.txt and, when there are several, KEY.json holds them all as `{"file", "captions": [...]}` (references
for caption evaluation). Images are kept as their original bytes when JPEG/PNG/WEBP.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from data_pipelines.read.bad_samples import reason_of
from data_pipelines.images import ImageError
from data_pipelines.convert.writers import DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE, ShardWriter, WriteStats

FILE_FIELDS = ("file", "image", "file_name")
CAPTION_FIELDS = ("caption", "text")


def _first_field(row: dict, names: tuple[str, ...]):
    return next((row[name] for name in names if row.get(name) not in (None, "")), None)


def read_caption_rows(path: str | os.PathLike) -> tuple[dict[str, list[str]], dict[str, int]]:
    """({image file: [captions in file order]} in first-appearance order, {reason: bad rows}).

    The format is told by the name (`.jsonl`, `.json`: JSON lines; `.csv`: CSV), else by content: a first non-blank
    character `{` means JSON lines, anything else CSV. ValueError for a file with no caption rows at all (empty,
    a header alone) or whose every row is bad: nothing would be written.
    """
    text = Path(path).read_text(encoding="utf-8-sig")
    if not text.strip():
        raise ValueError(f"{path} is empty: it should hold caption rows (JSON lines or a CSV with a header)")
    bad: dict[str, int] = {}
    suffix = Path(path).suffix.lower()
    json_lines = suffix in (".jsonl", ".json") or (suffix != ".csv" and text.lstrip().startswith("{"))
    if json_lines and not text.lstrip().startswith("{"):
        raise ValueError(f"{path} is not JSON lines: its first line should be an object like "
                         '{"file": "a.jpg", "caption": "..."}')
    if json_lines:
        rows = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad["bad json line"] = bad.get("bad json line", 0) + 1
                continue
            rows.append(row if isinstance(row, dict) else {})
    else:
        reader = csv.DictReader(io.StringIO(text))
        header = set(reader.fieldnames or ())
        if not header & set(FILE_FIELDS) or not header & set(CAPTION_FIELDS):
            raise ValueError(f"{path}: the CSV header must name a file column ({', '.join(FILE_FIELDS)}) "
                             f"and a caption column ({', '.join(CAPTION_FIELDS)}); found {sorted(header)}")
        rows = list(reader)
    captions: dict[str, list[str]] = {}
    for row in rows:
        file, caption = _first_field(row, FILE_FIELDS), _first_field(row, CAPTION_FIELDS)
        if file is None or not isinstance(caption, str) or not caption.strip():
            reason = "row without file" if file is None else "empty caption"
            bad[reason] = bad.get(reason, 0) + 1
            continue
        captions.setdefault(str(file), []).append(caption.strip())
    if not rows:
        raise ValueError(f"{path} holds no caption rows, only a header")
    if not captions:
        raise ValueError(f"{path}: none of its {len(rows)} rows names a file and a caption "
                         f"({', '.join(f'{reason} {count}' for reason, count in bad.items())})")
    return captions, bad


def convert_folder(
    images_dir: str | os.PathLike,
    captions_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    overwrite: bool = False,
    report=print,
    scrub=None,
    blur=None,
) -> WriteStats:
    """Write one caption sample per image named in `captions_file`; keys are the image's rank there.

    Skipped and counted: rows without a file or caption, missing images, unreadable images.
    """
    images_root = Path(images_dir)
    captions, bad_rows = read_caption_rows(captions_file)
    with ShardWriter(out_dir, maxcount=maxcount, maxsize=maxsize, overwrite=overwrite, report=report,
                     scrub=scrub, blur=blur) as writer:
        for reason, count in bad_rows.items():
            writer.skip(reason, count)
        for index, (file, references) in enumerate(captions.items()):
            try:
                image = (images_root / file).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                writer.skip("missing image")
                continue
            meta = {"file": file, "captions": references} if len(references) > 1 else None
            try:
                writer.write_caption(image, references[0], key=f"{index:09d}", meta=meta)
            except ImageError as error:
                writer.skip(reason_of(error))
    return writer.stats
