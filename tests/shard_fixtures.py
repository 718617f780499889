"""Helpers for data-pipeline tests: tiny images, hand-written tar shards (good and broken), a tiny processor."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

from PIL import Image

from data_pipelines.processor import Processor
from data_pipelines.chat.tokenizer import train_tokenizer


def png_bytes(colour=(200, 30, 30), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(colour=(30, 200, 30), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def huge_png_header(width: int = 9000, height: int = 9000) -> bytes:
    """A PNG whose header claims width x height pixels (no pixel data): must be refused before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def caption_sample(index: int) -> dict:
    return {"__key__": f"c{index:05d}", "png": png_bytes(), "txt": f"caption {index}".encode()}


def chat_sample(index: int, image: bool = True) -> dict:
    conversation = [{"from": "human", "value": ("<image>\n" if image else "") + f"question {index}"},
                    {"from": "gpt", "value": f"answer {index}"}]
    sample = {"__key__": f"q{index:05d}", "json": json.dumps({"conversations": conversation}).encode()}
    if image:
        sample["png"] = png_bytes()
    return sample


def text_sample(index: int) -> dict:
    return {"__key__": f"t{index:05d}", "txt": f"document {index} says hello".encode()}


def write_tar(path: Path, samples: list[dict]) -> Path:
    """Write samples ({"__key__", ext: bytes}) into a tar shard, members in key order as webdataset expects."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for extension, data in sample.items():
                if extension.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_shards(folder: Path, shards: list[list[dict]], sizes: bool = True) -> list[Path]:
    """Shards `00000.tar`, ... in folder (+ sizes.json with each shard's sample count)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_tar(folder / f"{i:05d}.tar", samples) for i, samples in enumerate(shards)]
    if sizes:
        counts = {path.name: len(samples) for path, samples in zip(paths, shards)}
        (folder / "sizes.json").write_text(json.dumps(counts))
    return paths


def truncate_last_member(path: Path) -> None:
    """Cut a tar file in the middle of its last member's data (what an interrupted copy leaves)."""
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    cut = last.offset_data + max(1, last.size // 2)
    data = path.read_bytes()[:cut]
    path.write_bytes(data)


def tiny_processor(max_length: int | None = None) -> Processor:
    """A processor with a small BPE tokenizer, 16 px images and 4 tokens per image."""
    texts = [f"caption {i} question {i} answer {i} document {i} says hello" for i in range(200)]
    tokenizer = train_tokenizer(texts, vocab_size=320)
    return Processor(tokenizer, image_size=16, tokens_per_image=4, max_length=max_length)
