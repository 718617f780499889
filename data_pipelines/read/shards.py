"""Reading shards: shard files -> their sample counts -> webdataset sample dicts -> canonical `Sample`s.

The one reader of the project: training (data_pipelines.read.loader), evaluation (eval_samples), the tokenizer
trainer and the benchmarks all read shards here, and every sample that cannot be used goes to one
`bad_samples.BadSampleHandler` (skipped and counted by reason, never fatal). Only a shard that cannot be
found is an error, and it names the file. The shard layouts are the contract of docs/formats.md.

A source's `path` is a folder (`data/shapes/train/chat`: every `*.tar` in it, sorted), a brace pattern
(`data/caps/{00000..00127}.tar`), a single `.tar` file, or a list of those. Sample counts come from the
`sizes.json` next to the shards (written by every writer); a shard missing from it is counted by reading
its tar headers, so a loader always knows its length.

A raw sample is what a tar shard groups by key: `{"__key__": "000123", "__url__": "shard.tar", "jpg": b"...",
"txt": b"...", "json": b"..."}`. `parse_sample(kind, raw)` checks it against its kind's layout and returns a
`Sample` whose images are still compressed bytes (decoding happens later, so shuffle buffers stay small);
anything malformed raises `BadSample` with a short `reason` ("empty caption", "invalid json", ...).
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import braceexpand
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from data_pipelines.chat.conversation import caption_conversation, count_image_markers, normalise_conversation
from data_pipelines.chat.special_tokens import IMAGE_MARKER
from data_pipelines.images import DEFAULT_MAX_PIXELS, load_image
from data_pipelines.read.bad_samples import INVALID_CONVERSATION, INVALID_JSON, NON_UTF8_TEXT, BadSampleHandler
from data_pipelines.video import VIDEO_EXTENSIONS, VIDEO_MARKER, VideoOptions, decode_frames, frames_text

SIZES_FILE = "sizes.json"


# -- shard lists -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardSet:
    """The shards of one source, in a fixed order, with the sample count of each."""

    shards: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)

    def __len__(self) -> int:
        return len(self.shards)


def load_shard_set(path: str | os.PathLike | list) -> ShardSet:
    """Shards and sample counts of a folder, brace pattern, `.tar` file or list of those. FileNotFoundError or
    UnreadableShard names a shard that is missing or not a tar file."""
    shards = expand_shards(path)
    folder_sizes: dict[str, dict[str, int]] = {}  # each sizes.json is read once
    return ShardSet(tuple(shards), tuple(shard_size(shard, folder_sizes) for shard in shards))


def expand_shards(path: str | os.PathLike | list) -> list[str]:
    """Shard paths of a folder (its `*.tar`, sorted), a brace pattern, a `.tar` file, or a list of those, each one
    checked to be a readable tar: FileNotFoundError or UnreadableShard names the first that is not."""
    if isinstance(path, (list, tuple)):
        return [shard for item in path for shard in expand_shards(item)]
    path = os.fspath(path)
    if os.path.isdir(path):
        shards = sorted(str(p) for p in Path(path).glob("*.tar"))
        if not shards:
            raise FileNotFoundError(f"no .tar shards in folder {path}")
        check_shards(shards)
        return shards
    shards = list(braceexpand.braceexpand(path))
    missing = [shard for shard in shards if not os.path.isfile(shard)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"shard {missing[0]} of {path} does not exist{more}")
    check_shards(shards)
    return shards


def shard_size(shard: str, folder_sizes: dict[str, dict[str, int]] | None = None) -> int:
    """Samples in one shard: from the `sizes.json` in its folder, else by counting the keys in the tar."""
    folder = os.path.dirname(os.path.abspath(shard))
    folder_sizes = {} if folder_sizes is None else folder_sizes
    if folder not in folder_sizes:
        folder_sizes[folder] = read_sizes(folder)
    sizes = folder_sizes[folder]
    name = os.path.basename(shard)
    return sizes[name] if name in sizes else count_tar_samples(shard)


def read_sizes(folder: str) -> dict[str, int]:
    """A folder's `sizes.json` ({shard file name: samples}); empty when the folder has none."""
    sizes_path = os.path.join(folder, SIZES_FILE)
    if not os.path.isfile(sizes_path):
        return {}
    with open(sizes_path, encoding="utf-8") as f:
        sizes = json.load(f)
    if not isinstance(sizes, dict) or not all(isinstance(n, int) for n in sizes.values()):
        raise ValueError(f"{sizes_path} must map shard file names to sample counts")
    return sizes


def count_tar_samples(shard: str) -> int:
    """Distinct sample keys (member names up to the first dot) in a tar file, read from its headers only."""
    keys = set()
    # a truncated shard: count what is readable; the loader skips the rest as bad samples
    with contextlib.suppress(tarfile.ReadError), tarfile.open(shard, mode="r:*") as tar:
        for member in tar:
            if member.isreg():
                keys.add(_sample_key(member.name))
    return len(keys)


def _sample_key(name: str) -> str:
    folder, _, base = name.rpartition("/")
    return f"{folder}/{base.split('.', 1)[0]}" if folder else base.split(".", 1)[0]


# -- tar shards -> webdataset sample dicts -----------------------------------------------------------------

class TruncatedShard(tarfile.ReadError):
    """A tar shard that ends inside a member; the samples before the cut are kept, the cut one is counted."""

    reason = "truncated tar member"


class UnreadableShard(ValueError):
    """A shard that cannot be read at all (missing, unreadable, not a tar file): an error naming the file, where a
    bad sample inside a shard is only skipped and counted."""


COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: tarfile's "r|*" reads these


def check_shards(shards: Iterable[str]) -> None:
    """UnreadableShard for the first local shard that cannot be opened or does not start with a tar header
    (remote URLs are left to the reader). Reads 512 bytes of each."""
    for shard in shards:
        if "://" in shard or shard.startswith("pipe:"):
            continue
        try:
            with open(shard, "rb") as handle:
                head = handle.read(tarfile.BLOCKSIZE)
        except OSError as error:
            raise UnreadableShard(f"cannot read shard {shard}: {error.strerror or error}") from None
        if head.startswith(COMPRESSED_MAGIC):
            continue
        try:
            tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
        except tarfile.EmptyHeaderError:
            continue  # an empty archive: a tar with no samples
        except tarfile.HeaderError as error:
            raise UnreadableShard(f"shard {shard} is not a tar file ({error})") from None


def tar_samples(shards: Iterable[str], handler: BadSampleHandler) -> Iterator[dict[str, Any]]:
    """Tar shards -> webdataset sample dicts `{"__key__", "__url__", ext: bytes, ...}`, grouped by key.

    A shard that ends inside a member (a truncated copy) yields the samples before the cut; the cut sample goes
    to the handler once, as "truncated tar member". A key met a second time in one shard (a repeated member, or
    the same key again later) makes that second sample a "duplicate key". A shard that cannot be opened at all
    raises UnreadableShard (`check_shards` finds those before any reading starts).
    """
    for shard in shards:
        yield from _shard_samples(shard, handler)


def _shard_samples(shard: str, handler: BadSampleHandler) -> Iterator[dict[str, Any]]:
    try:
        stream = gopen(shard, "rb")
        tar = tarfile.open(fileobj=stream, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UnreadableShard(f"cannot open shard {shard}: {error}") from None
    current: dict[str, Any] | None = None
    seen: set[str] = set()  # keys of this shard so far
    with stream, tar:
        try:
            for member in tar:
                if not member.isreg():
                    continue
                key, extension = base_plus_ext(member.name)
                if key is None:
                    continue
                data = tar.extractfile(member).read()
                if current is not None and key != current["__key__"]:
                    yield from _complete(current, handler)
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": shard, "__duplicate__": key in seen}
                    seen.add(key)
                extension = extension.lower()
                current["__duplicate__"] |= extension in current
                current[extension] = data
        except (tarfile.TarError, OSError, EOFError) as exn:
            key = current["__key__"] if current else "?"
            handler(TruncatedShard(f"{shard}: stopped at sample {key}: {exn}"))
            return
    if current is not None:
        yield from _complete(current, handler)


def _complete(sample: dict[str, Any], handler: BadSampleHandler) -> Iterator[dict[str, Any]]:
    if sample.pop("__duplicate__"):
        handler(BadSample(DUPLICATE_KEY, f"{sample['__url__']}: key {sample['__key__']} appears twice"))
        return
    yield sample


def skip_bad(items: Iterable, transform: Callable[[Any], Any], handler: BadSampleHandler,
             name: Callable[[Any], str] | None = None) -> Iterator:
    """`transform` each item; an item whose transform raises is skipped and goes to the handler, named by
    `name(item)` where given."""
    for item in items:
        try:
            result = transform(item)
        except Exception as exn:  # any failure of one sample is that sample's problem, never the run's
            handler(exn, name(item)) if name is not None else handler(exn)
            continue
        yield result


def sample_name(sample: Sample) -> str:
    """`shard.tar:key`, how warnings and counts name a sample."""
    return f"{sample.meta.get('url') or '?'}:{sample.key}"


# -- sample dicts -> Samples: the shard layout of each kind (docs/formats.md) ---------------------------

KINDS: tuple[str, ...] = ("caption", "chat", "text", "preference")
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")

# Reasons a shard sample is rejected here (the bad-sample handler counts by these strings).
EMPTY_CAPTION = "empty caption"
MISSING_CAPTION = "missing caption"
EMPTY_TEXT = "empty text"
MISSING_TEXT = "missing text"
MISSING_IMAGE = "missing image"
MISSING_CONVERSATION = "missing conversation"
MISSING_ANSWER = "missing chosen or rejected answer"
DUPLICATE_KEY = "duplicate key"


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
    text samples carry `text`; preference samples carry the prompt's turns as `conversation` and the two answers
    as meta["chosen"] and meta["rejected"]. `images` are compressed bytes in the order their markers appear.
    """

    key: str
    kind: str
    conversation: list[dict] | None = None
    text: str | None = None
    images: list[bytes] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    video: bytes | None = None  # a chat's clip, compressed; decoding turns it into frames in `images`


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
    image, video = _image_bytes(raw), _video_bytes(raw)
    if video is not None:
        return _video_chat(raw, info, conversation, video, image)
    conversation = _checked_image(raw, conversation, image)
    meta = _base_meta(raw)
    meta.update({k: v for k, v in info.items() if k not in ("conversations", "messages")})
    images = [image] if image is not None else []
    return Sample(key=raw["__key__"], kind="chat", conversation=conversation, images=images, meta=meta)


def _checked_image(raw: dict[str, Any], conversation: list[dict], image: bytes | None) -> list[dict]:
    """The turns checked against the sample's one image (or none): markers without an image are a bad sample, and
    an image without a marker gets one in front of the first user turn (LLaVA rows sometimes omit it)."""
    markers = count_image_markers(conversation)
    if markers and image is None:
        raise BadSample(MISSING_IMAGE, f"{_where(raw)}: conversation has {markers} <image> but no image file")
    if image is not None and markers > 1:
        raise BadSample(INVALID_CONVERSATION, f"{_where(raw)}: {markers} <image> markers but one image file")
    return _marked(raw, conversation, IMAGE_MARKER) if image is not None and markers == 0 else conversation


def _marked(raw: dict[str, Any], conversation: list[dict], marker: str) -> list[dict]:
    """The turns with `marker` (an image's or a clip's) in front of the first user turn."""
    first_user = next((i for i, turn in enumerate(conversation) if turn["role"] == "user"), None)
    if first_user is None:
        raise BadSample(INVALID_CONVERSATION, f"{_where(raw)}: {marker} but no user turn to show it in")
    turn = conversation[first_user]
    return [*conversation[:first_user], {**turn, "content": f"{marker}\n{turn['content']}"},
            *conversation[first_user + 1:]]


def _video_chat(raw: dict[str, Any], info: dict, conversation: list[dict], video: bytes, image: bytes | None) -> Sample:
    """A chat about a clip (KEY.mp4 / .webm / .gif): `<video>` marks it, in front of the first user turn when no turn
    does; its frames are drawn when the sample is decoded (decode_sample)."""
    videos = sum(turn["content"].count(VIDEO_MARKER) for turn in conversation)
    if image is not None or count_image_markers(conversation):
        raise BadSample(INVALID_CONVERSATION, f"{_where(raw)}: a video and an image: one medium per sample")
    if videos > 1:
        raise BadSample(INVALID_CONVERSATION, f"{_where(raw)}: {videos} <video> markers but one clip")
    if videos == 0:
        conversation = _marked(raw, conversation, VIDEO_MARKER)
    meta = _base_meta(raw)
    meta.update({k: v for k, v in info.items() if k not in ("conversations", "messages")})
    return Sample(key=raw["__key__"], kind="chat", conversation=conversation, meta=meta, video=video)


def parse_preference(raw: dict[str, Any]) -> Sample:
    """KEY.json with `prompt` (chat turns, or one user message as a string), `chosen` and `rejected` (the two
    answers: strings, or TRL's one assistant turn in a list) (+ an optional KEY.jpg|png|webp, marked in the prompt
    as a chat marks it)."""
    if "json" not in raw:
        raise BadSample(MISSING_CONVERSATION, _where(raw))
    info = _json(raw)
    if not isinstance(info, dict):
        raise BadSample(INVALID_JSON, f"{_where(raw)}: preference sample is not an object")
    prompt = info.get("prompt")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise BadSample(MISSING_CONVERSATION, f"{_where(raw)}: no 'prompt' (chat turns or a string)")
    try:
        conversation = normalise_conversation(prompt)
    except (ValueError, TypeError, KeyError) as exn:
        raise BadSample(INVALID_CONVERSATION, f"{_where(raw)}: {exn}") from exn
    if conversation[-1]["role"] != "user":
        raise BadSample(INVALID_CONVERSATION, f"{_where(raw)}: the prompt must end with a user turn")
    answers = {}
    for name in ("chosen", "rejected"):
        answer = info.get(name)
        if isinstance(answer, list):  # TRL's conversational form: [{"role": "assistant", "content": ...}]
            try:
                turns = normalise_conversation(answer)
            except (ValueError, TypeError, KeyError) as exn:
                raise BadSample(INVALID_CONVERSATION, f"{_where(raw)}: {name}: {exn}") from exn
            answer = turns[0]["content"] if len(turns) == 1 and turns[0]["role"] == "assistant" else None
        if not isinstance(answer, str) or not answer.strip():
            raise BadSample(MISSING_ANSWER, f"{_where(raw)}: '{name}' is not a non-empty answer")
        answers[name] = answer.strip()
    image = _image_bytes(raw)
    conversation = _checked_image(raw, conversation, image)  # as a chat's: before the first user turn if unmarked
    meta = _base_meta(raw)
    meta.update({k: v for k, v in info.items() if k not in ("prompt", "chosen", "rejected", "images")})
    meta.update(answers)
    return Sample(key=raw["__key__"], kind="preference", conversation=conversation,
                  images=[image] if image is not None else [], meta=meta)


def parse_text(raw: dict[str, Any]) -> Sample:
    """KEY.txt only: a plain text document."""
    if "txt" not in raw:
        raise BadSample(MISSING_TEXT, _where(raw))
    text = _text(raw, "txt")
    if not text.strip():
        raise BadSample(EMPTY_TEXT, _where(raw))
    return Sample(key=raw["__key__"], kind="text", text=text, meta=_base_meta(raw))


_PARSERS = {"caption": parse_caption, "chat": parse_chat, "text": parse_text, "preference": parse_preference}


def _image_bytes(raw: dict[str, Any]) -> bytes | None:
    for ext in IMAGE_EXTENSIONS:
        if ext in raw:
            return raw[ext]
    return None


def _video_bytes(raw: dict[str, Any]) -> bytes | None:
    return next((raw[ext] for ext in VIDEO_EXTENSIONS if ext in raw), None)


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


def read_samples(path: str | os.PathLike | list, kind: str, handler: BadSampleHandler | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, decode: bool = True) -> Iterator[Sample]:
    """Every usable sample of a source once, in shard order (images decoded unless decode=False): what
    evaluation, the tokenizer trainer and the benchmarks read; bad samples go to the handler.
    FileNotFoundError names a shard that does not exist."""
    handler = handler or BadSampleHandler()
    samples = parse_samples(tar_samples(expand_shards(path), handler), kind, handler)
    return decode_samples(samples, handler, max_pixels) if decode else samples


def parse_samples(raws: Iterable[dict], kind: str, handler: BadSampleHandler) -> Iterator[Sample]:
    """Webdataset sample dicts -> canonical `Sample`s (images still compressed)."""
    return skip_bad(raws, lambda raw: parse_sample(kind, raw), handler)


def decode_sample(sample: Sample, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  video: VideoOptions = VideoOptions()) -> Sample:
    """A `Sample` whose images are decoded RGB PIL images (BadImage / ImageTooLarge for bad ones); a clip becomes
    its sampled frames, and its `<video>` marker the frames' timestamped lines (data_pipelines.video; BadVideo,
    VideoTooLong)."""
    if sample.video is not None:
        frames, duration = decode_frames(sample.video, video)
        text = frames_text([time for time, _ in frames], duration)
        turns = [{**turn, "content": turn["content"].replace(VIDEO_MARKER, text)} for turn in sample.conversation]
        images = [load_image(frame, max_pixels=max_pixels) for _, frame in frames]
        return replace(sample, conversation=turns, images=images, video=None,
                       meta={**sample.meta, "frame_times": [time for time, _ in frames], "clip_seconds": duration})
    if not sample.images:
        return sample
    return replace(sample, images=[load_image(image, max_pixels=max_pixels) for image in sample.images])


def decode_samples(samples: Iterable[Sample], handler: BadSampleHandler,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS, video: VideoOptions = VideoOptions()) -> Iterator[Sample]:
    return skip_bad(samples, lambda sample: decode_sample(sample, max_pixels, video), handler, sample_name)


# -- the text of any shard, for the tokenizer trainer ------------------------------------------------------------

def find_shards(folders: Iterable[str | os.PathLike]) -> list[str]:
    """Every *.tar under the folders (recursively, sorted); a `.tar` file is taken as it is.
    FileNotFoundError for a folder that is missing."""
    shards: list[str] = []
    for folder in map(Path, folders):
        if folder.is_file() and folder.suffix == ".tar":
            shards.append(str(folder))
            continue
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder: {folder}")
        shards.extend(sorted(str(p) for p in folder.rglob("*.tar")))
    return shards


def record_texts(raw: dict[str, Any]) -> list[str]:
    """Texts of one sample dict of any kind: its .txt and the captions / turns of its .json, `<image>` markers
    removed (they become image tokens, never text). BadSample for text that is not UTF-8, JSON that is not an
    object, or turns that are not a conversation."""
    texts: list[str] = []
    if "txt" in raw:
        texts.append(_text(raw, "txt"))
    if "json" in raw:
        data = _json(raw)
        if not isinstance(data, dict):
            raise BadSample(INVALID_JSON, f"{_where(raw)}: the json member is not an object")
        rows = data.get("conversations", data.get("messages"))
        if "chosen" in data and isinstance(data.get("prompt"), (str, list)):  # a preference pair
            prompt = data["prompt"]
            rows = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            for answer in (data.get("chosen"), data.get("rejected")):
                if isinstance(answer, str):
                    texts.append(answer)
                elif isinstance(answer, list):  # TRL's conversational answers
                    with contextlib.suppress(ValueError):
                        texts.extend(turn["content"] for turn in normalise_conversation(answer))
        if rows:
            try:
                texts.extend(turn["content"] for turn in normalise_conversation(rows))
            except ValueError as exn:
                raise BadSample(INVALID_CONVERSATION, f"{_where(raw)}: {exn}") from exn
        captions = data.get("captions")
        if isinstance(captions, list):
            texts.extend(c for c in captions if isinstance(c, str) and c not in texts)
    cleaned = (text.replace(IMAGE_MARKER, "").replace(VIDEO_MARKER, "").strip() for text in texts)
    return [text for text in cleaned if text]


def shard_texts(shards: Iterable[str | os.PathLike], handler: BadSampleHandler | None = None,
                stats: Counter | None = None) -> Iterator[str]:
    """Texts of every usable sample of the shards, in order; unusable samples go to the handler. Counts
    'shards', 'records', 'texts' and 'chars' into stats. UnreadableShard names a shard that is not a tar."""
    shards = [str(shard) for shard in shards]
    check_shards(shards)
    handler = handler or BadSampleHandler()
    stats = Counter() if stats is None else stats
    stats["shards"] += len(shards)
    for texts in skip_bad(tar_samples(shards, handler), record_texts, handler):
        stats["records"] += 1
        for text in texts:
            stats["texts"] += 1
            stats["chars"] += len(text)
            yield text


# -- which kind a source holds ------------------------------------------------------------------------------

DETECT_SAMPLES = 20  # samples read from the first shard to tell its kind


def kind_of_raw(raw: dict[str, Any]) -> str | None:
    """The kind one raw sample is laid out as: a `.json` with `conversations` or `messages` is chat, an image
    with a caption (`.txt`, or `captions` in its `.json`) is caption, a `.txt` alone is text; None: none."""
    info = None
    if "json" in raw:
        with contextlib.suppress(BadSample):
            info = _json(raw)
    if isinstance(info, dict) and ("conversations" in info or "messages" in info):
        return "chat"
    if isinstance(info, dict) and "prompt" in info and "chosen" in info and "rejected" in info:
        return "preference"
    if _image_bytes(raw) is not None:
        return "caption" if "txt" in raw or (isinstance(info, dict) and "captions" in info) else None
    return "text" if "txt" in raw else None


def detect_kind(path: str | os.PathLike | list) -> str:
    """The kind of the source's first samples (ValueError naming the source when they hold none, or several)."""
    from itertools import islice

    shards = expand_shards(path)
    raws = islice(tar_samples(shards[:1], BadSampleHandler()), DETECT_SAMPLES)
    kinds = {kind for kind in map(kind_of_raw, raws) if kind is not None}
    if len(kinds) != 1:
        what = ("no caption, chat or text samples" if not kinds
                else f"samples of several kinds ({', '.join(sorted(kinds))})")
        raise ValueError(f"{path}: its first samples hold {what}; name the kind with --kind")
    return kinds.pop()


def resolve_kind(path: str | os.PathLike | list, kind: str | None) -> str:
    """The kind named (checked against the shards' own) or, with None, the one detected; ValueError in one line
    when they disagree, so a chat source is never read as captions that all lack their caption."""
    found = detect_kind(path) if kind is None else _detect_or_none(path)
    if kind is not None and found is not None and found != kind:
        raise ValueError(f"--kind {kind}, but {path} holds {found} samples: pass --kind {found} (or leave it out)")
    return kind or found


def _detect_or_none(path: str | os.PathLike | list) -> str | None:
    try:
        return detect_kind(path)
    except ValueError:
        return None
