"""Shard sample formats: turn one webdataset sample dict (bytes per file extension) into a canonical `Sample`.

A raw sample is what webdataset groups from a tar shard: `{"__key__": "000123", "__url__": "shard.tar",
"jpg": b"...", "txt": b"...", "json": b"..."}`. `parse_sample(kind, raw)` checks it against the shard
layout of its kind (DESIGN.md "Data formats") and returns a `Sample` whose images are still compressed
bytes: decoding happens later so that shuffle buffers stay small. Anything malformed raises `BadSample`
with a short `reason` ("empty caption", "invalid json", ...), which the bad-sample handler counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from data_pipelines.chat import caption_conversation, count_image_markers, normalise_conversation
from data_pipelines.special_tokens import IMAGE_MARKER

Kind = Literal["caption", "chat", "text"]
KINDS: tuple[str, ...] = ("caption", "chat", "text")
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")

# Reasons a shard sample is rejected here (the bad-sample handler counts by these strings).
EMPTY_CAPTION = "empty caption"
MISSING_CAPTION = "missing caption"
EMPTY_TEXT = "empty text"
MISSING_TEXT = "missing text"
INVALID_JSON = "invalid json"
NON_UTF8_TEXT = "non-utf8 text"
MISSING_IMAGE = "missing image"
MISSING_CONVERSATION = "missing conversation"
INVALID_CONVERSATION = "invalid conversation"


class BadSample(ValueError):
    """A shard sample that cannot be used; `reason` is the short category it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Sample:
    """One training sample as read from a shard, before decoding and tokenizing.

    caption and chat samples carry a `conversation` (role/content turns, `<image>` marking each image);
    text samples carry `text`. `images` are compressed bytes in the order their markers appear.
    """

    key: str
    kind: str
    conversation: list[dict] | None = None
    text: str | None = None
    images: list[bytes] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def parse_sample(kind: str, raw: dict[str, Any]) -> Sample:
    """Parse one webdataset sample dict of the given kind into a `Sample`; raise `BadSample` if malformed."""
    if kind not in _PARSERS:
        raise ValueError(f"unknown sample kind {kind!r}; expected one of {', '.join(KINDS)}")
    return _PARSERS[kind](raw)


def parse_caption(raw: dict[str, Any]) -> Sample:
    """KEY.jpg|png|webp + KEY.txt (+ KEY.json with an optional `captions` list of references)."""
    image = _image_bytes(raw)
    if image is None:
        raise BadSample(MISSING_IMAGE, _where(raw))
    meta = _base_meta(raw)
    references: list[str] = []
    if "json" in raw:
        info = _json(raw)
        if not isinstance(info, dict):
            raise BadSample(INVALID_JSON, f"{_where(raw)}: caption metadata is not an object")
        captions = info.get("captions")
        if captions is not None:
            if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
                raise BadSample(INVALID_JSON, f"{_where(raw)}: 'captions' is not a list of strings")
            references = [c.strip() for c in captions if c.strip()]
        meta.update({k: v for k, v in info.items() if k != "captions"})
    if "txt" in raw:
        caption = _text(raw, "txt").strip()
        if not caption:
            raise BadSample(EMPTY_CAPTION, _where(raw))
    elif references:
        caption = references[0]  # no KEY.txt: train on the first reference caption
    else:
        raise BadSample(MISSING_CAPTION, _where(raw))
    meta["references"] = references or [caption]
    return Sample(key=raw["__key__"], kind="caption", conversation=caption_conversation(caption),
                  images=[image], meta=meta)


def parse_chat(raw: dict[str, Any]) -> Sample:
    """KEY.json with LLaVA `conversations` or OpenAI `messages` (+ an optional KEY.jpg|png|webp).

    A chat with an image file but no `<image>` marker gets one in front of its first user turn (LLaVA's
    convention); a marker without an image file is a bad sample ("missing image").
    """
    if "json" not in raw:
        raise BadSample(MISSING_CONVERSATION, _where(raw))
    info = _json(raw)
    if not isinstance(info, dict):
        raise BadSample(INVALID_JSON, f"{_where(raw)}: chat sample is not an object")
    rows = info.get("conversations", info.get("messages"))
    if not isinstance(rows, list) or not rows:
        raise BadSample(MISSING_CONVERSATION, f"{_where(raw)}: no 'conversations' or 'messages' list")
    try:
        conversation = normalise_conversation(rows)
    except (ValueError, TypeError, KeyError) as exn:
        raise BadSample(INVALID_CONVERSATION, f"{_where(raw)}: {exn}") from exn
    image = _image_bytes(raw)
    markers = count_image_markers(conversation)
    if markers and image is None:
        raise BadSample(MISSING_IMAGE, f"{_where(raw)}: conversation has {markers} <image> but no image file")
    if image is not None and markers == 0:
        # LLaVA rows sometimes omit the marker; the image then goes before the first user question.
        first_user = next((i for i, turn in enumerate(conversation) if turn["role"] == "user"), None)
        if first_user is None:
            raise BadSample(INVALID_CONVERSATION, f"{_where(raw)}: an image but no user turn to show it in")
        turn = conversation[first_user]
        conversation[first_user] = {**turn, "content": f"{IMAGE_MARKER}\n{turn['content']}"}
    elif image is not None and markers > 1:
        raise BadSample(INVALID_CONVERSATION, f"{_where(raw)}: {markers} <image> markers but one image file")
    meta = _base_meta(raw)
    meta.update({k: v for k, v in info.items() if k not in ("conversations", "messages")})
    images = [image] if image is not None else []
    return Sample(key=raw["__key__"], kind="chat", conversation=conversation, images=images, meta=meta)


def parse_text(raw: dict[str, Any]) -> Sample:
    """KEY.txt only: a plain text document."""
    if "txt" not in raw:
        raise BadSample(MISSING_TEXT, _where(raw))
    text = _text(raw, "txt")
    if not text.strip():
        raise BadSample(EMPTY_TEXT, _where(raw))
    return Sample(key=raw["__key__"], kind="text", text=text, meta=_base_meta(raw))


_PARSERS = {"caption": parse_caption, "chat": parse_chat, "text": parse_text}

def _image_bytes(raw: dict[str, Any]) -> bytes | None:
    for ext in IMAGE_EXTENSIONS:
        if ext in raw:
            return raw[ext]
    return None


def _text(raw: dict[str, Any], ext: str) -> str:
    try:
        return raw[ext].decode("utf-8")
    except UnicodeDecodeError as exn:
        raise BadSample(NON_UTF8_TEXT, f"{_where(raw)}.{ext}: {exn.reason} at byte {exn.start}") from exn


def _json(raw: dict[str, Any]) -> Any:
    text = _text(raw, "json")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exn:
        raise BadSample(INVALID_JSON, f"{_where(raw)}.json: {exn.msg} at line {exn.lineno}") from exn


def _where(raw: dict[str, Any]) -> str:
    return f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"


def _base_meta(raw: dict[str, Any]) -> dict:
    return {"url": raw.get("__url__")}
