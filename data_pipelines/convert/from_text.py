"""Convert plain text files into text shards (KEY.txt, one document each).

Paragraphs (separated by blank lines) are grouped in file order into documents of about `doc_chars`
characters; a paragraph longer than that is a document of its own, never cut. With `per_file` each file is
one document. Bytes that are not UTF-8 are replaced (U+FFFD) and the files where that happened counted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from data_pipelines.convert.writers import DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE, ShardWriter, WriteStats

DEFAULT_DOC_CHARS = 2000
TEXT_SUFFIXES = (".txt", ".md")  # files taken from a folder given in place of a file
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")


def text_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files in argument order; a folder contributes its .txt/.md files, recursively, sorted by path."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return files


def decode_text(data: bytes) -> tuple[str, bool]:
    """(text with \\n line ends, whether invalid UTF-8 had to be replaced). A BOM is dropped."""
    try:
        text, replaced = data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        text, replaced = data.decode("utf-8-sig", errors="replace"), True
    return text.replace("\r\n", "\n").replace("\r", "\n"), replaced


def paragraphs(text: str) -> list[str]:
    """Blank-line-separated paragraphs, stripped, empty ones dropped."""
    return [paragraph.strip() for paragraph in PARAGRAPH_BREAK.split(text) if paragraph.strip()]


def documents(text: str, doc_chars: int = DEFAULT_DOC_CHARS) -> Iterator[str]:
    """Consecutive paragraphs joined by a blank line while the document stays within `doc_chars`."""
    current: list[str] = []
    length = 0
    for paragraph in paragraphs(text):
        added = len(paragraph) + (2 if current else 0)
        if current and length + added > doc_chars:
            yield "\n\n".join(current)
            current, length, added = [], 0, len(paragraph)
        current.append(paragraph)
        length += added
    if current:
        yield "\n\n".join(current)


def convert_text(
    files: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    doc_chars: int = DEFAULT_DOC_CHARS,
    per_file: bool = False,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    overwrite: bool = False,
    report=print,
    scrub=None,
) -> WriteStats:
    """Write the documents of `files` (in order) as text shards; keys are the running document index."""
    if doc_chars < 1:
        raise ValueError(f"doc_chars must be positive, got {doc_chars}")
    paths = text_files(files)
    with ShardWriter(out_dir, maxcount=maxcount, maxsize=maxsize, overwrite=overwrite, report=report,
                     scrub=scrub) as writer:
        for path in paths:
            text, replaced = decode_text(path.read_bytes())
            if replaced:
                writer.warn("files with invalid UTF-8 (replaced)")
            if per_file:
                file_documents = [text.strip()] if text.strip() else []
            else:
                file_documents = list(documents(text, doc_chars))
            if not file_documents:
                writer.skip("empty file")
            for document in file_documents:
                writer.write_text(document)
    return writer.stats
