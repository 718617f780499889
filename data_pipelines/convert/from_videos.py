"""Convert clips and the questions about them (a LLaVA-style file) into chat shards with the clip beside each chat.

A row is LLaVA's `{"video": "clips/a.mp4", "conversations": [...]}` (or OpenAI `messages`, or a plain
`{"video", "question", "answer"}`), the path relative to the clips folder. It is written as a chat sample: KEY.json
with the conversation (`<video>` marks the clip; without one it goes in front of the first user turn) and the clip
itself as KEY.mp4 / .webm / .gif, stored as it is (docs/formats.md). Rows that cannot train are counted by reason and
skipped: no conversation, a missing clip, a clip of another format, a clip PyAV cannot decode, an `<image>` marker.
"""

from __future__ import annotations

import os
from pathlib import Path

from data_pipelines.chat.special_tokens import IMAGE_MARKER
from data_pipelines.convert.from_llava import SkipRow, llava_turns, read_rows
from data_pipelines.convert.writers import DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE, ShardWriter, WriteStats
from data_pipelines.video import VIDEO_EXTENSIONS, VIDEO_MARKER, BadVideo, VideoOptions, decode_frames


def video_turns(row: dict) -> list[dict]:
    """The row's turns in LLaVA's layout; SkipRow with the reason when it has none."""
    if "question" in row and "answer" in row and "conversations" not in row and "messages" not in row:
        if not all(isinstance(row[k], str) and row[k].strip() for k in ("question", "answer")):
            raise SkipRow("empty question or answer")
        return [{"from": "human", "value": row["question"].strip()}, {"from": "gpt", "value": row["answer"].strip()}]
    turns = llava_turns(row)
    if any(IMAGE_MARKER in turn["value"] for turn in turns):
        raise SkipRow("image marker in a video chat")
    if sum(turn["value"].count(VIDEO_MARKER) for turn in turns) > 1:
        raise SkipRow("several video markers")
    return turns


def read_clip(root: Path, relative) -> tuple[str, bytes]:
    """(extension, bytes) of a row's clip, checked to decode; SkipRow with the reason otherwise."""
    if not isinstance(relative, str) or not relative:
        raise SkipRow("no video")
    extension = relative.rsplit(".", 1)[-1].lower()
    if extension not in VIDEO_EXTENSIONS:
        raise SkipRow("video format not mp4, webm or gif")
    try:
        data = (root / relative).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise SkipRow("missing video") from None
    try:
        decode_frames(data, VideoOptions(frames=1))
    except BadVideo:
        raise SkipRow("corrupt video") from None
    return extension, data


def convert_videos(annotations: str | os.PathLike, videos_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                   maxcount: int = DEFAULT_MAXCOUNT, maxsize: int = DEFAULT_MAXSIZE, overwrite: bool = False,
                   report=print) -> WriteStats:
    """Write the rows of `annotations` as chat shards with clips in `out_dir`; keys are the rows' indices."""
    root = Path(videos_dir)
    with ShardWriter(out_dir, maxcount=maxcount, maxsize=maxsize, overwrite=overwrite, report=report) as writer:
        for index, row in enumerate(read_rows(annotations)):
            try:
                if isinstance(row, SkipRow):
                    raise row
                if not isinstance(row, dict):
                    raise SkipRow("bad row")
                turns = video_turns(row)
                extension, clip = read_clip(root, row.get("video"))
                meta = {k: v for k, v in row.items() if k not in ("video", "conversations", "messages", "question",
                                                                    "answer") and isinstance(v, (str, int, float))}
                writer.write({extension: clip, "json": {"conversations": turns, **meta}}, key=f"{index:09d}")
            except SkipRow as reason:
                writer.skip(str(reason))
    return writer.stats
