"""Convert preference pairs in TRL's columns (JSON lines) into preference shards.

A row is `{"prompt": ..., "chosen": ..., "rejected": ..., "images"?: [path]}` as TRL's DPOTrainer reads it: the
prompt a string (one user turn) or chat turns (OpenAI `{"role", "content"}` with text and image parts, or LLaVA's
`{"from", "value"}`), each answer a string or TRL's conversational `[{"role": "assistant", "content": ...}]`. It is
written as preference shards (docs/formats.md): KEY.json `{"prompt": [turns], "chosen": "...", "rejected": "...",
...}` plus the image as a chat shard stores it, with `<image>` marking it in the prompt. Rows that cannot train are
counted by reason and skipped: a line that is not UTF-8 or JSON, no prompt or answer, two equal answers, a missing
or unreadable image, more than one image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from data_pipelines.chat.conversation import normalise_conversation
from data_pipelines.chat.special_tokens import IMAGE_MARKER
from data_pipelines.convert.from_llava import SkipRow, image_paths
from data_pipelines.convert.from_pairs import SkipPair, read_lines
from data_pipelines.convert.writers import DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE, ShardWriter, WriteStats
from data_pipelines.images import ImageError, load_image
from data_pipelines.read.bad_samples import reason_of


def prompt_turns(prompt: Any) -> list[dict]:
    """The prompt as {"role", "content"} turns ending with a user turn; SkipPair with the reason otherwise."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise SkipPair("missing prompt")
    try:
        turns = normalise_conversation(prompt)
    except (ValueError, TypeError, KeyError):
        raise SkipPair("prompt not a conversation") from None
    if turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise SkipPair("prompt not ending with a user turn")
    return turns


def answer_text(answer: Any) -> str:
    """An answer as text: a string, or TRL's one assistant turn; SkipPair with the reason otherwise."""
    if isinstance(answer, list):
        try:
            turns = normalise_conversation(answer)
        except (ValueError, TypeError, KeyError):
            raise SkipPair("answer not text") from None
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise SkipPair("answer not one assistant turn")
        answer = turns[0]["content"]
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise SkipPair("missing answer")
    if not isinstance(answer, str):
        raise SkipPair("answer not text")
    return answer.strip()


def row_preference(row: dict, images_root: Path | None) -> tuple[dict, bytes | None]:
    """(KEY.json's content, the image bytes or None) of one row; SkipPair with the reason when it cannot train."""
    turns = prompt_turns(row.get("prompt"))
    chosen, rejected = answer_text(row.get("chosen")), answer_text(row.get("rejected"))
    if chosen == rejected:
        raise SkipPair("chosen equals rejected")
    try:
        paths = image_paths(row)
    except SkipRow as reason:
        raise SkipPair(str(reason)) from None
    if len(paths) > 1:
        raise SkipPair("several images")  # the shard layout holds one image per sample, as chats do
    markers = sum(turn["content"].count(IMAGE_MARKER) for turn in turns)
    if markers > len(paths) or (paths and markers > 1):
        raise SkipPair("image markers do not match images")
    image = None
    if paths:
        if images_root is None or not (images_root / paths[0]).is_file():
            raise SkipPair("missing image")
        image = (images_root / paths[0]).read_bytes()
        load_image(image)  # ImageError (counted by its reason) for a file that is no image
        if markers == 0:  # TRL puts images before the first user turn's text
            first = next(i for i, turn in enumerate(turns) if turn["role"] == "user")
            turns[first] = {**turns[first], "content": f"{IMAGE_MARKER}\n{turns[first]['content']}"}
    meta = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", "images", "image")
            and (v is None or isinstance(v, (str, int, float, bool)))}
    return {"prompt": turns, "chosen": chosen, "rejected": rejected, **meta}, image


def convert_preferences(
    path: str | os.PathLike,
    images_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    overwrite: bool = False,
    report=print,
) -> WriteStats:
    """Write the preference rows of the JSON lines file `path` as preference shards in `out_dir`; keys are the
    line's index among the non-empty lines, so skipping a row never renames the others."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    images_root = Path(images_dir) if images_dir is not None else None
    with ShardWriter(out_dir, maxcount=maxcount, maxsize=maxsize, overwrite=overwrite, report=report) as writer:
        for index, row in enumerate(read_lines(path)):
            try:
                if isinstance(row, SkipPair):
                    raise row
                content, image = row_preference(row, images_root)
                writer.write_preference(content, image=image, key=f"{index:09d}")
            except SkipPair as reason:
                writer.skip(str(reason))
            except ImageError as error:
                writer.skip(reason_of(error))
    return writer.stats
