"""Shards as a crawl leaves them: good samples salted with every kind of broken one, in the layouts other tools
write (img2dataset's caption shards, LLaVA chat shards). The reliability tests run every command over them."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from shard_fixtures import huge_png_header, truncate_last_member, write_tar


def image_bytes(mode: str, fmt: str, size: int = 24, seed: int = 0) -> bytes:
    """A small image of the given Pillow mode and format: the odd-but-valid kinds a crawl holds."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray((rng.random((size, size)) * 65535).astype(np.uint16))
    elif mode == "P":
        image = Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).convert("P")
        image.info["transparency"] = 0
    else:
        image = Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"transparency": 0} if mode == "P" else {}))
    return buffer.getvalue()


def img2dataset_sample(key: str, caption: bytes, image: bytes | None, ext: str = "jpg") -> dict:
    """KEY.jpg + KEY.txt + KEY.json as img2dataset writes them (url, caption, key, status, size)."""
    sample = {"__key__": key, "txt": caption,
              "json": json.dumps({"url": f"https://example.com/{key}.jpg", "key": key, "status": "success",
                                  "caption": caption.decode("utf-8", "replace")}).encode()}
    if image is not None:
        sample[ext] = image
    return sample


def good_caption(index: int) -> dict:
    return img2dataset_sample(f"{index:09d}", f"a photo of thing {index} on a table".encode(),
                              image_bytes("RGB", "JPEG", seed=index))


# Valid but unusual images: converted to RGB and trained on, never skipped.
ODD_IMAGES = {"cmyk": ("CMYK", "JPEG", "jpg"), "png16": ("I;16", "PNG", "png"), "palette": ("P", "PNG", "png"),
              "rgba": ("RGBA", "PNG", "png")}


def write_salted_captions(folder: Path) -> tuple[int, Counter]:
    """Two img2dataset-layout caption shards; returns (usable samples, expected skipped counts by reason).
    The second shard is cut in the middle of its last member."""
    jpeg = image_bytes("RGB", "JPEG")
    bad = [
        img2dataset_sample("b-corrupt", b"corrupt jpeg", b"\xff\xd8\xff\xe0" + b"garbage" * 30),
        img2dataset_sample("b-truncated", b"truncated jpeg", jpeg[: len(jpeg) // 2]),
        img2dataset_sample("b-zero-bytes", b"zero-byte image", b""),
        img2dataset_sample("b-latin1", "café au lait".encode("latin-1"), jpeg),
        img2dataset_sample("b-empty", b"", jpeg),
        img2dataset_sample("b-spaces", b"  \n\t ", jpeg),
        img2dataset_sample("b-bomb", b"decompression bomb", huge_png_header(30000, 30000), ext="png"),
        img2dataset_sample("b-no-image", b"a caption without its image", None),
        {"__key__": "b-no-text", "jpg": jpeg},
    ]
    odd = [img2dataset_sample(f"o-{name}", f"an odd {name} image".encode(), image_bytes(mode, fmt), ext)
           for name, (mode, fmt, ext) in ODD_IMAGES.items()]
    first = []
    for index, sample in enumerate(bad + odd):
        first += [good_caption(index), sample]
    duplicate = good_caption(500)
    first += [duplicate, good_caption(501), duplicate]  # the key 000000500 twice in one shard
    second = [good_caption(600), good_caption(601), good_caption(602)]
    folder.mkdir(parents=True, exist_ok=True)
    write_tar(folder / "00000.tar", first)
    write_tar(folder / "00001.tar", second)
    truncate_last_member(folder / "00001.tar")  # 602's json is cut: the whole sample is lost
    (folder / "sizes.json").write_text(json.dumps({"00000.tar": len(first), "00001.tar": len(second)}))
    usable = len(bad) + 2 * len(odd) + 4  # a good neighbour each, the odd images, one 500, 501, 600 and 601
    expected = Counter({"corrupt image": 3, "non-utf8 text": 1, "empty caption": 2, "image too large": 1,
                        "missing image": 1, "missing caption": 1, "duplicate key": 1, "truncated tar member": 1})
    return usable, expected


def chat_json(rows) -> bytes:
    return json.dumps(rows).encode()


def good_chat(index: int) -> dict:
    return {"__key__": f"q{index:05d}", "jpg": image_bytes("RGB", "JPEG", seed=index),
            "json": chat_json({"id": index, "conversations": [
                {"from": "human", "value": f"<image>\nWhat is thing {index}?"},
                {"from": "gpt", "value": f"It is thing {index}."}]})}


def write_salted_chats(folder: Path) -> tuple[int, Counter]:
    """One LLaVA-layout chat shard with broken conversations between good ones."""
    jpeg = image_bytes("RGB", "JPEG")
    bad = [
        {"__key__": "b-list", "jpg": jpeg, "json": chat_json([{"from": "human", "value": "hi"}])},
        {"__key__": "b-syntax", "jpg": jpeg, "json": b'{"conversations": [{"from": "human"'},
        {"__key__": "b-no-answer", "jpg": jpeg,
         "json": chat_json({"conversations": [{"from": "human", "value": "<image>\nWhat is it?"}]})},
        {"__key__": "b-two-markers", "jpg": jpeg, "json": chat_json({"conversations": [
            {"from": "human", "value": "<image>\n<image>\nCompare them."}, {"from": "gpt", "value": "Same."}]})},
        {"__key__": "b-marker-no-image", "json": chat_json({"conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]})},
        {"__key__": "b-no-json", "jpg": jpeg},
    ]
    samples = []
    for index, sample in enumerate(bad):
        samples += [good_chat(index), sample]
    samples.append(good_chat(100))
    folder.mkdir(parents=True, exist_ok=True)
    write_tar(folder / "00000.tar", samples)
    (folder / "sizes.json").write_text(json.dumps({"00000.tar": len(samples)}))
    expected = Counter({"invalid json": 2, "no supervised token": 1, "invalid conversation": 1, "missing image": 1,
                        "missing conversation": 1})
    return len(bad) + 1, expected
