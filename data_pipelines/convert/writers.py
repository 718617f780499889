"""Write samples into a folder of webdataset tar shards (`00000.tar`, `00001.tar`, ...) plus `sizes.json`.

Every converter goes through `ShardWriter`, so the shard layout of docs/formats.md is decided
here once: caption samples are KEY.{jpg,png,webp} + KEY.txt (+ KEY.json), chat samples KEY.json
`{"conversations": [...]}` (+ image), text samples KEY.txt. Images keep their original bytes when they are
JPEG, PNG or WEBP already (no recompression); anything else Pillow reads is re-encoded as PNG.
Shards are written under a temporary name and renamed when complete, so a crash never leaves a
half-written `NNNNN.tar` that a loader would pick up.

The tars are written with the standard library's `tarfile`, exactly as `webdataset.TarWriter` lays them out
(a sample's members consecutive, sorted by extension), because importing webdataset imports torch: seconds
of start-up for every `mmllm data` command.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from data_pipelines.images import load_image

DEFAULT_MAXCOUNT = 1000  # samples per shard: enough shards for every dataloader worker on small data
DEFAULT_MAXSIZE = 256 * 1024**2  # bytes per shard
TAR_BLOCK = 512  # every tar member costs a header block plus padding to a whole block
KEPT_IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # Pillow format -> member extension
IMAGE_EXTENSIONS = tuple(KEPT_IMAGE_FORMATS.values())
SHARD_NAME = re.compile(r"^\d{5,}\.tar$")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")  # webdataset groups members by the name up to the first dot


def encode_image(image: bytes | Image.Image) -> tuple[str, bytes]:
    """(member extension, bytes) for an image: original bytes for JPEG/PNG/WEBP, PNG otherwise.

    Bytes are decoded once by the loader's own `images.load_image` (the same pixel guard and checks), so a
    truncated, corrupt or oversized file raises its ImageError here rather than in the middle of a training run.
    """
    if isinstance(image, Image.Image):
        return "png", _png_bytes(image)
    decoded = load_image(image)  # BadImage / ImageTooLarge
    with Image.open(io.BytesIO(image)) as header:  # the format, from the header alone
        image_format = header.format
    if image_format in KEPT_IMAGE_FORMATS:
        return KEPT_IMAGE_FORMATS[image_format], bytes(image)
    return "png", _png_bytes(decoded)


def _png_bytes(image: Image.Image) -> bytes:
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _member_bytes(value: bytes | str | dict | list) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False, sort_keys=False).encode("utf-8")


def _tar_size(size: int) -> int:
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


@dataclass
class WriteStats:
    """What a writer did: samples written, samples skipped by reason, and counted oddities it repaired."""

    written: int = 0
    shards: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> samples left out
    warnings: Counter = field(default_factory=Counter)  # reason -> things repaired but kept
    scrubbed: Counter = field(default_factory=Counter)  # kind of personal data -> replacements (--scrub-pii)
    blurred_images: int = 0  # images written with faces blurred (--blur-faces)
    blurred_faces: int = 0

    def summary(self, out_dir: str | os.PathLike) -> str:
        """One line: "wrote 1200 samples in 3 shards to X; skipped 4: missing image 3, unreadable image 1"."""
        line = f"wrote {self.written} samples in {self.shards} shards to {out_dir}"
        if self.skipped:
            line += f"; skipped {sum(self.skipped.values())}: " + _reasons(self.skipped)
        if self.warnings:
            line += "; warnings: " + _reasons(self.warnings)
        if self.scrubbed:
            line += "; scrubbed: " + _reasons(self.scrubbed)
        if self.blurred_images:
            line += f"; faces blurred: {self.blurred_faces} in {self.blurred_images} images"
        return line


def _reasons(counts: Counter) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in counts.most_common())


class ShardWriter:
    """Writes samples to `out_dir/{00000..}.tar`, a new shard every `maxcount` samples or `maxsize` bytes.

    Keys are the caller's (letters, digits, `_` and `-` only, unique) or the zero-padded running index.
    `close()` writes `sizes.json` ({shard file name: sample count}) and reports the one-line summary.
    A folder that already holds shards is refused unless `overwrite`, which deletes them first, so stale
    shards never mix with new ones.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        maxcount: int = DEFAULT_MAXCOUNT,
        maxsize: int = DEFAULT_MAXSIZE,
        overwrite: bool = False,
        report: Callable[[str], Any] | None = print,
        scrub: Callable[[str], tuple[str, Counter]] | None = None,
        blur: Callable[[Any], tuple[Any, int]] | None = None,
    ):
        """scrub: text -> (text, replacements by kind), applied to every caption, turn and document written,
        raw copies of other shards included (data_pipelines.privacy.pii.PIIScrubber.scrub); blur: image -> (image, faces blurred), applied to every image
        (data_pipelines.privacy.faces.FaceBlurrer.blur_encoded). Their counts go into the summary line."""
        if maxcount < 1 or maxsize < 1:
            raise ValueError(f"maxcount and maxsize must be positive, got {maxcount} and {maxsize}")
        self.out_dir = Path(out_dir)
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.report = report
        self.scrub = scrub
        self.blur = blur
        self.stats = WriteStats()
        self.sizes: dict[str, int] = {}  # finished shard name -> sample count
        self._keys: set[str] = set()
        self._tar: tarfile.TarFile | None = None
        self._shard_count = 0
        self._shard_bytes = 0
        self._closed = False
        self._prepare_folder(overwrite)

    def _prepare_folder(self, overwrite: bool) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        old = sorted(p for p in self.out_dir.iterdir()
                     if SHARD_NAME.match(p.name) or p.name == "sizes.json" or p.name.endswith(".tar.partial"))
        if old and not overwrite:
            raise FileExistsError(f"{self.out_dir} already holds shards; choose another folder or overwrite")
        for path in old:
            path.unlink()

    # -- samples of each kind (the shard contract) --

    def write_caption(self, image: bytes | Image.Image, caption: str, *, key: str | None = None,
                      meta: dict | None = None) -> str:
        """KEY.{jpg,png,webp} + KEY.txt (+ KEY.json with `meta`, e.g. {"captions": [...]})."""
        extension, image_bytes = encode_image(self._blurred(image))
        members: dict[str, Any] = {extension: image_bytes, "txt": caption}
        if meta:
            members["json"] = meta
        return self.write(members, key=key)

    def write_chat(self, conversations: list[dict], *, image: bytes | Image.Image | None = None,
                   key: str | None = None, meta: dict | None = None) -> str:
        """KEY.json {"conversations": [...], **meta} (+ KEY.{jpg,png,webp}; none means a text-only chat)."""
        return self._write_with_image({"json": {"conversations": conversations, **(meta or {})}}, image, key)

    def write_preference(self, content: dict, *, image: bytes | Image.Image | None = None,
                         key: str | None = None) -> str:
        """KEY.json {"prompt": [turns], "chosen", "rejected", **meta} (+ KEY.{jpg,png,webp} as a chat's)."""
        return self._write_with_image({"json": content}, image, key)

    def _write_with_image(self, members: dict[str, Any], image: bytes | Image.Image | None, key: str | None) -> str:
        """The sample's members plus its image, if any (faces blurred when asked), under the image's extension."""
        if image is not None:
            extension, image_bytes = encode_image(self._blurred(image))
            members[extension] = image_bytes
        return self.write(members, key=key)

    def write_text(self, text: str, *, key: str | None = None) -> str:
        """KEY.txt."""
        return self.write({"txt": text}, key=key)

    def _blurred(self, image: bytes | Image.Image) -> bytes | Image.Image:
        if self.blur is None:
            return image
        image, faces = self.blur(image)
        if faces:
            self.stats.blurred_images += 1
            self.stats.blurred_faces += faces
        return image

    def _scrubbed(self, text: str) -> str:
        text, counts = self.scrub(text)
        self.stats.scrubbed.update(counts)
        return text

    def _scrubbed_members(self, members: dict) -> dict:
        """The sample with its text scrubbed: the txt member (caption or document) and, in its json, the reference
        `captions` and every turn of `conversations` / `messages`. Raw bytes (a copied shard) are decoded first; a
        json member that does not parse is left as it is (the reader will skip and count it)."""
        members = dict(members)
        if "txt" in members:
            text = members["txt"]
            members["txt"] = self._scrubbed(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text)
        info = members.get("json")
        if isinstance(info, (bytes, str)):
            try:
                info = json.loads(info)
            except ValueError:
                return members
        if not isinstance(info, dict):
            return members
        info = dict(info)
        if isinstance(info.get("captions"), list):
            info["captions"] = [self._scrubbed(c) if isinstance(c, str) else c for c in info["captions"]]
        for name in ("conversations", "messages"):
            if isinstance(info.get(name), list):
                info[name] = [{k: self._scrubbed(v) if k in ("value", "content") and isinstance(v, str) else v
                               for k, v in turn.items()} if isinstance(turn, dict) else turn for turn in info[name]]
        members["json"] = info
        return members

    # -- the generic part --

    def write(self, members: dict[str, bytes | str | dict | list], *, key: str | None = None) -> str:
        """Write one sample: {extension: bytes, str (utf-8) or json-able object}. Returns its key."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        key = f"{self.stats.written:09d}" if key is None else key
        if not KEY_PATTERN.match(key):
            raise ValueError(f"sample key {key!r} must be letters, digits, '_' or '-' (no dots, no slashes)")
        if key in self._keys:
            raise ValueError(f"sample key {key!r} written twice")
        if self.scrub is not None:
            members = self._scrubbed_members(members)
        encoded = {extension: _member_bytes(value) for extension, value in members.items()}
        sample_bytes = sum(_tar_size(len(data)) for data in encoded.values())
        if self._tar is not None and (self._shard_count >= self.maxcount
                                      or self._shard_bytes + sample_bytes > self.maxsize):
            self._finish_shard()
        if self._tar is None:
            self._start_shard()
        for extension in sorted(encoded):
            data = encoded[extension]
            # fixed owner, mode and mtime (an int: a float would add a PAX header): same samples, same bytes
            member = tarfile.TarInfo(f"{key}.{extension}")
            member.size, member.mtime, member.mode = len(data), 0, 0o444
            self._tar.addfile(member, io.BytesIO(data))
        self._keys.add(key)
        self._shard_count += 1
        self._shard_bytes += sample_bytes
        self.stats.written += 1
        return key

    def skip(self, reason: str, count: int = 1) -> None:
        """Count samples left out, by reason ("missing image", "unreadable image", ...)."""
        self.stats.skipped[reason] += count

    def warn(self, reason: str, count: int = 1) -> None:
        """Count something repaired but kept (e.g. invalid UTF-8 replaced)."""
        self.stats.warnings[reason] += count

    def _shard_path(self, index: int) -> Path:
        return self.out_dir / f"{index:05d}.tar"

    def _start_shard(self) -> None:
        partial = self._shard_path(len(self.sizes)).with_suffix(".tar.partial")
        self._tar = tarfile.open(partial, "w", format=tarfile.PAX_FORMAT)
        self._shard_count = 0
        self._shard_bytes = 0

    def _finish_shard(self) -> None:
        self._tar.close()
        self._tar = None
        final = self._shard_path(len(self.sizes))
        final.with_suffix(".tar.partial").replace(final)
        self.sizes[final.name] = self._shard_count

    def close(self) -> WriteStats:
        """Finish the last shard, write sizes.json, report the summary line; returns the stats."""
        if self._closed:
            return self.stats
        if self._tar is not None:
            self._finish_shard()
        self._closed = True
        self.stats.shards = len(self.sizes)
        (self.out_dir / "sizes.json").write_text(json.dumps(self.sizes, indent=1) + "\n")
        if self.report is not None:
            self.report(self.stats.summary(self.out_dir))
        return self.stats

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:  # an error: drop the partial shard, keep what was finished
            self._tar.close()
            self._tar = None
            self._shard_path(len(self.sizes)).with_suffix(".tar.partial").unlink(missing_ok=True)
