"""ShardWriter: shard rotation by count and bytes, sizes.json, image bytes kept or re-encoded, keys, summary."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_pipelines.images import ImageError
from data_pipelines.convert.writers import ShardWriter, WriteStats, encode_image


def image_bytes(image_format: str, colour=(200, 40, 40), size=(6, 5), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format=image_format)
    return buffer.getvalue()


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(member.name, tar.extractfile(member).read()) for member in tar.getmembers()]


def test_shards_rotate_every_maxcount_samples_and_sizes_json_counts_them(tmp_path):
    with ShardWriter(tmp_path, maxcount=10, report=None) as writer:
        for i in range(25):
            writer.write_text(f"document {i}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", "00001.tar", "00002.tar", "sizes.json"]
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"00000.tar": 10, "00001.tar": 10, "00002.tar": 5}
    members = [m for shard in ("00000.tar", "00001.tar", "00002.tar") for m in tar_members(tmp_path / shard)]
    assert members == [(f"{i:09d}.txt", f"document {i}".encode()) for i in range(25)]
    assert writer.stats.written == 25 and writer.stats.shards == 3


def test_shards_rotate_before_exceeding_maxsize(tmp_path):
    # each sample: a 512-byte header + 3000 bytes padded to 3072 = 3584 bytes; two fit in 8000, three do not
    with ShardWriter(tmp_path, maxsize=8000, report=None) as writer:
        for i in range(5):
            writer.write_text("x" * 3000)
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"00000.tar": 2, "00001.tar": 2, "00002.tar": 1}


def test_a_sample_larger_than_maxsize_gets_a_shard_of_its_own(tmp_path):
    with ShardWriter(tmp_path, maxsize=1000, report=None) as writer:
        writer.write_text("small")
        writer.write_text("y" * 5000)
        writer.write_text("small again")
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"00000.tar": 1, "00001.tar": 1, "00002.tar": 1}


@pytest.mark.parametrize("image_format,extension", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
def test_jpeg_png_webp_keep_their_original_bytes(tmp_path, image_format, extension):
    original = image_bytes(image_format)
    with ShardWriter(tmp_path, report=None) as writer:
        writer.write_caption(original, "a red patch", key="img")
    assert sorted(tar_members(tmp_path / "00000.tar")) == sorted([(f"img.{extension}", original),
                                                                   ("img.txt", b"a red patch")])


@pytest.mark.parametrize("image_format,mode", [("BMP", "RGB"), ("GIF", "P"), ("TIFF", "CMYK"), ("TIFF", "RGB")])
def test_other_image_formats_are_reencoded_as_png_with_the_same_pixels(image_format, mode):
    colour = (10, 200, 30, 0) if mode == "CMYK" else (10, 200, 30) if mode == "RGB" else 3
    original = image_bytes(image_format, colour=colour, mode=mode)
    extension, data = encode_image(original)
    assert extension == "png"
    with Image.open(io.BytesIO(data)) as stored, Image.open(io.BytesIO(original)) as source:
        assert stored.format == "PNG"
        assert stored.convert("RGB").tobytes() == source.convert("RGB").tobytes()


def test_pil_image_is_stored_as_png():
    image = Image.new("RGB", (4, 3), (1, 2, 3))
    extension, data = encode_image(image)
    with Image.open(io.BytesIO(data)) as stored:
        assert (extension, stored.format, stored.size, stored.getpixel((0, 0))) == ("png", "PNG", (4, 3), (1, 2, 3))


@pytest.mark.parametrize("data", [b"", b"not an image at all", image_bytes("JPEG", size=(64, 64))[:200]])
def test_unreadable_image_bytes_raise_unreadable_image(data):
    with pytest.raises(ImageError):
        encode_image(data)


@pytest.mark.parametrize("key", ["a.b", "dir/name", "", "sp ace"])
def test_keys_with_dots_slashes_or_spaces_are_refused(tmp_path, key):
    with ShardWriter(tmp_path, report=None) as writer, pytest.raises(ValueError, match="key"):
        writer.write_text("hello", key=key)


def test_a_key_written_twice_is_refused(tmp_path):
    with ShardWriter(tmp_path, report=None) as writer:
        writer.write_text("one", key="k-1_a")
        with pytest.raises(ValueError, match="twice"):
            writer.write_text("two", key="k-1_a")


def test_webdataset_reads_back_every_kind_grouped_by_key(tmp_path):
    png = image_bytes("PNG")
    conversation = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
    with ShardWriter(tmp_path, report=None) as writer:
        writer.write_caption(png, "a red patch", meta={"captions": ["a red patch", "red"]})
        writer.write_chat(conversation, image=png, meta={"id": "q7"})
        writer.write_chat(conversation[1:], meta={"id": "text-only"})
        writer.write_text("just words")
    dataset = wds.WebDataset(str(tmp_path / "00000.tar"), shardshuffle=False)
    samples = {sample["__key__"]: sample for sample in dataset}
    assert sorted(samples) == [f"{i:09d}" for i in range(4)]
    caption, chat, text_chat, text = (samples[f"{i:09d}"] for i in range(4))
    assert caption["png"] == png and caption["txt"] == b"a red patch"
    assert json.loads(caption["json"]) == {"captions": ["a red patch", "red"]}
    assert chat["png"] == png
    assert json.loads(chat["json"]) == {"conversations": conversation, "id": "q7"}
    assert "png" not in text_chat and json.loads(text_chat["json"])["conversations"] == conversation[1:]
    assert set(text) - {"__key__", "__url__", "__local_path__"} == {"txt"} and text["txt"] == b"just words"


def test_summary_counts_skips_by_reason_most_common_first():
    stats = WriteStats(written=1200, shards=3)
    stats.skipped.update({"unreadable image": 1, "missing image": 3})
    assert stats.summary("out") == ("wrote 1200 samples in 3 shards to out; "
                                    "skipped 4: missing image 3, unreadable image 1")
    stats.warnings["files with invalid UTF-8 (replaced)"] = 2
    assert stats.summary("out").endswith("; warnings: files with invalid UTF-8 (replaced) 2")
    assert WriteStats(written=5, shards=1).summary("d") == "wrote 5 samples in 1 shards to d"


def test_close_prints_the_one_line_summary(tmp_path, capsys):
    with ShardWriter(tmp_path) as writer:
        writer.write_text("a")
        writer.skip("missing image", 2)
    assert capsys.readouterr().out == f"wrote 1 samples in 1 shards to {tmp_path}; skipped 2: missing image 2\n"


def test_folder_with_shards_is_refused_unless_overwrite_which_removes_stale_shards(tmp_path):
    with ShardWriter(tmp_path, maxcount=1, report=None) as writer:
        for i in range(3):
            writer.write_text(f"old {i}")
    with pytest.raises(FileExistsError):
        ShardWriter(tmp_path, report=None)
    with ShardWriter(tmp_path, overwrite=True, report=None) as writer:
        writer.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", "sizes.json"]
    assert tar_members(tmp_path / "00000.tar") == [("000000000.txt", b"new")]


def test_same_samples_give_byte_identical_shards(tmp_path):
    for run in ("a", "b"):
        with ShardWriter(tmp_path / run, report=None) as writer:
            writer.write_caption(image_bytes("PNG"), "caption", meta={"captions": ["caption", "other"]})
            writer.write_text("text")
    assert (tmp_path / "a" / "00000.tar").read_bytes() == (tmp_path / "b" / "00000.tar").read_bytes()


def test_an_error_while_writing_leaves_only_finished_shards(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, maxcount=2, report=None) as writer:
        for i in range(3):
            writer.write_text(f"doc {i}")
        raise RuntimeError("conversion failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar"]


def test_a_writer_with_nothing_written_leaves_an_empty_sizes_json(tmp_path):
    with ShardWriter(tmp_path, report=None):
        pass
    assert json.loads((tmp_path / "sizes.json").read_text()) == {}
