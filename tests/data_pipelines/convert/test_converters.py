"""Converters round trip: LLaVA/OpenAI rows, image folders with captions, and text files, read back from the tars."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from data_pipelines.read.shards import parse_sample
from data_pipelines.convert.from_folder import convert_folder
from data_pipelines.convert.from_llava import convert_llava
from data_pipelines.convert.from_text import convert_text, documents


def image_file(path: Path, image_format: str = "PNG", colour=(200, 30, 30)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, format=image_format)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def read_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} over every shard listed in sizes.json, checking the counts it records."""
    sizes = json.loads((folder / "sizes.json").read_text())
    assert sorted(sizes) == sorted(p.name for p in folder.glob("*.tar"))
    samples: dict[str, dict[str, bytes]] = {}
    for shard, count in sizes.items():
        keys = set()
        with tarfile.open(folder / shard) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                keys.add(key)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
        assert len(keys) == count
    return samples


# -- LLaVA / OpenAI conversations --

@pytest.fixture
def llava_rows(tmp_path):
    images = tmp_path / "images"
    coco = image_file(images / "coco" / "train2017" / "000001.jpg", "JPEG")
    gif = image_file(images / "other.gif", "GIF", colour=(10, 20, 250))
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    rows = [
        {"id": "multi", "image": "coco/train2017/000001.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A red patch."},
            {"from": "human", "value": "And its colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "text-only", "conversations": [
            {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."}]},
        {"id": "missing", "image": "coco/nowhere.jpg", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
        {"id": "broken", "image": "broken.jpg", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
        {"id": "no-answer", "conversations": [{"from": "human", "value": "Anyone?"}]},
        {"id": "no-marker", "image": "other.gif", "conversations": [
            {"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "Blue."}]},
        {"id": "openai", "image": "coco/train2017/000001.jpg", "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": "red"}]},
    ]
    return tmp_path, images, rows, {"coco": coco, "gif": gif}


def test_llava_json_list_round_trip_keeps_turns_images_and_counts_skips(llava_rows, capsys):
    tmp_path, images, rows, originals = llava_rows
    (tmp_path / "chat.json").write_text(json.dumps(rows))
    stats = convert_llava(tmp_path / "chat.json", images, tmp_path / "out")
    summary = capsys.readouterr().out.strip()
    assert summary == (f"wrote 4 samples in 1 shards to {tmp_path / 'out'}; "
                       "skipped 3: missing image 1, corrupt image 1, no assistant turn 1")
    assert stats.written == 4
    samples = read_samples(tmp_path / "out")
    assert sorted(samples) == ["000000000", "000000001", "000000005", "000000006"]
    multi = samples["000000000"]
    assert set(multi) == {"jpg", "json"} and multi["jpg"] == originals["coco"]
    assert json.loads(multi["json"]) == {"conversations": rows[0]["conversations"], "id": "multi"}
    text_only = samples["000000001"]
    assert set(text_only) == {"json"}
    assert json.loads(text_only["json"])["conversations"] == rows[1]["conversations"]
    no_marker = samples["000000005"]
    assert set(no_marker) == {"png", "json"}  # GIF re-encoded as PNG, same pixels
    with Image.open(io.BytesIO(no_marker["png"])) as stored, Image.open(io.BytesIO(originals["gif"])) as source:
        assert stored.convert("RGB").tobytes() == source.convert("RGB").tobytes()
    assert json.loads(no_marker["json"])["conversations"][0] == {"from": "human", "value": "<image>\nDescribe it."}
    openai = json.loads(samples["000000006"]["json"])
    assert openai == {"conversations": [{"from": "human", "value": "<image>\nColour?"},
                                        {"from": "gpt", "value": "red"}], "id": "openai"}


def test_llava_json_lines_with_openai_rows_and_a_broken_line(tmp_path):
    image = image_file(tmp_path / "img" / "a.png")
    lines = [
        json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<image>\nQ1"},
                                 {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
                                 {"role": "assistant", "content": "A2"}], "image": "a.png"}),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "text only"}, {"role": "assistant", "content": "ok"}]}),
        json.dumps({"messages": [{"role": "user", "content": "<image>\nQ"}, {"role": "assistant", "content": "A"}],
                    "images": ["a.png", "a.png"]}),
        json.dumps({"messages": [{"role": "narrator", "content": "?"}, {"role": "assistant", "content": "A"}]}),
    ]
    (tmp_path / "chat.jsonl").write_text("\n".join(lines) + "\n")
    stats = convert_llava(tmp_path / "chat.jsonl", tmp_path / "img", tmp_path / "out", report=None)
    assert stats.written == 2
    assert dict(stats.skipped) == {"bad json line": 1, "several images": 1, "bad turn": 1}
    samples = read_samples(tmp_path / "out")
    assert samples["000000000"]["png"] == image
    assert json.loads(samples["000000000"]["json"])["conversations"] == [
        {"from": "system", "value": "s"}, {"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"},
        {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
    assert set(samples["000000002"]) == {"json"}


def test_llava_marker_without_image_and_two_markers_for_one_image_are_skipped(tmp_path):
    image_file(tmp_path / "a.png")
    rows = [{"conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
            {"image": "a.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                                 {"from": "gpt", "value": "A"}]}]
    (tmp_path / "chat.json").write_text(json.dumps(rows))
    stats = convert_llava(tmp_path / "chat.json", tmp_path, tmp_path / "out", report=None)
    assert stats.written == 0
    assert dict(stats.skipped) == {"image marker without image": 1, "image markers do not match images": 1}


def test_converted_llava_chats_parse_with_the_shard_reader(llava_rows):
    tmp_path, images, rows, _ = llava_rows
    (tmp_path / "chat.json").write_text(json.dumps(rows))
    convert_llava(tmp_path / "chat.json", images, tmp_path / "out", report=None)
    for key, members in read_samples(tmp_path / "out").items():
        sample = parse_sample("chat", {"__key__": key, **members})
        assert sample.conversation[-1]["role"] == "assistant"
        assert len(sample.images) == sum(turn["content"].count("<image>") for turn in sample.conversation)


# -- image folder + captions --

def test_folder_jsonl_groups_captions_of_one_image_and_skips_bad_rows(tmp_path, capsys):
    cat = image_file(tmp_path / "imgs" / "sub" / "cat.jpg", "JPEG")
    dog = image_file(tmp_path / "imgs" / "dog.webp", "WEBP", colour=(0, 90, 0))
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    rows = [{"file": "sub/cat.jpg", "caption": "a cat"}, {"image": "dog.webp", "text": "a dog"},
            {"file": "sub/cat.jpg", "caption": " a small cat "}, {"file": "gone.jpg", "caption": "missing"},
            {"file": "bad.png", "caption": "broken"}, {"file": "dog.webp", "caption": ""}, {"caption": "no file"}]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    stats = convert_folder(tmp_path / "imgs", tmp_path / "caps.jsonl", tmp_path / "out")
    assert capsys.readouterr().out.strip() == (
        f"wrote 2 samples in 1 shards to {tmp_path / 'out'}; skipped 4: "
        "empty caption 1, row without file 1, missing image 1, corrupt image 1")
    assert stats.written == 2
    samples = read_samples(tmp_path / "out")
    assert samples["000000000"] == {"jpg": cat, "txt": b"a cat", "json": json.dumps(
        {"file": "sub/cat.jpg", "captions": ["a cat", "a small cat"]}).encode()}
    assert samples["000000001"] == {"webp": dog, "txt": b"a dog"}
    first = parse_sample("caption", {"__key__": "000000000", **samples["000000000"]})
    assert first.meta["references"] == ["a cat", "a small cat"]


def test_folder_csv_with_image_and_text_columns(tmp_path):
    bmp = tmp_path / "imgs" / "x.bmp"
    image_file(bmp, "BMP", colour=(1, 2, 3))
    (tmp_path / "caps.csv").write_text('image,text\nx.bmp,"a dark, tiny square"\nx.bmp,black\n')
    convert_folder(tmp_path / "imgs", tmp_path / "caps.csv", tmp_path / "out", report=None)
    sample = read_samples(tmp_path / "out")["000000000"]
    assert sample["txt"] == b"a dark, tiny square"
    assert json.loads(sample["json"])["captions"] == ["a dark, tiny square", "black"]
    with Image.open(io.BytesIO(sample["png"])) as stored:
        assert stored.format == "PNG" and stored.getpixel((0, 0)) == (1, 2, 3)


def test_folder_csv_without_file_or_caption_column_is_refused(tmp_path):
    (tmp_path / "caps.csv").write_text("path,label\nx.jpg,cat\n")
    with pytest.raises(ValueError, match="header"):
        convert_folder(tmp_path, tmp_path / "caps.csv", tmp_path / "out", report=None)


# -- plain text --

def test_paragraphs_are_grouped_into_documents_up_to_the_target_size():
    text = "aaaa\n\nbbbb\n  \ncccc\n\n\n\ndddddddddddddddd\n\neeee"
    assert list(documents(text, doc_chars=10)) == ["aaaa\n\nbbbb", "cccc", "dddddddddddddddd", "eeee"]
    assert list(documents(text, doc_chars=1000)) == ["aaaa\n\nbbbb\n\ncccc\n\ndddddddddddddddd\n\neeee"]


def test_text_files_round_trip_with_invalid_utf8_replaced_and_counted(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("First paragraph.\r\n\r\nSecond paragraph.\n")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9 latin-1\n\nok")
    (tmp_path / "empty.txt").write_text("\n \n")
    stats = convert_text([tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "empty.txt"], tmp_path / "out",
                         doc_chars=20)
    assert capsys.readouterr().out.strip() == (
        f"wrote 3 samples in 1 shards to {tmp_path / 'out'}; skipped 1: empty file 1; "
        "warnings: files with invalid UTF-8 (replaced) 1")
    assert stats.written == 3
    samples = read_samples(tmp_path / "out")
    assert [samples[key]["txt"].decode() for key in sorted(samples)] == [
        "First paragraph.", "Second paragraph.", "caf\ufffd latin-1\n\nok"]
    assert all(set(members) == {"txt"} for members in samples.values())


def test_text_one_document_per_file_and_folders_expand_to_their_text_files(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "b.txt").write_text("bee\n\nbuzz")
    (tmp_path / "docs" / "sub" / "a.md").write_text("# A\n\nalpha")
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\0\1")
    convert_text([tmp_path / "docs"], tmp_path / "out", per_file=True, report=None)
    samples = read_samples(tmp_path / "out")
    assert [samples[key]["txt"] for key in sorted(samples)] == [b"bee\n\nbuzz", b"# A\n\nalpha"]


# -- command line --

def mmllm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmllm.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_converters_write_shards_and_print_counts(tmp_path):
    image_file(tmp_path / "imgs" / "a.png")
    turns = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    (tmp_path / "chat.json").write_text(json.dumps([{"id": "1", "image": "a.png", "conversations": turns},
                                                    {"id": "2", "image": "b.png", "conversations": turns}]))
    result = mmllm("data", "from-llava", str(tmp_path / "chat.json"), "--images", str(tmp_path / "imgs"),
                   "--out", str(tmp_path / "chat"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote 1 samples in 1 shards to {tmp_path / 'chat'}; skipped 1: missing image 1"

    (tmp_path / "caps.csv").write_text("file,caption\na.png,red\n")
    result = mmllm("data", "from-folder", str(tmp_path / "imgs"), "--captions", str(tmp_path / "caps.csv"),
                   "--out", str(tmp_path / "caps"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote 1 samples in 1 shards to {tmp_path / 'caps'}"

    (tmp_path / "t.txt").write_text("one\n\ntwo")
    result = mmllm("data", "from-text", str(tmp_path / "t.txt"), "--out", str(tmp_path / "text"), "--per-file")
    assert result.returncode == 0, result.stderr
    assert read_samples(tmp_path / "text") == {"000000000": {"txt": b"one\n\ntwo"}}


def test_cli_converter_user_errors_exit_2_with_one_line(tmp_path):
    missing = mmllm("data", "from-text", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    (tmp_path / "t.txt").write_text("words")
    assert mmllm("data", "from-text", str(tmp_path / "t.txt"), "--out", str(tmp_path / "out")).returncode == 0
    again = mmllm("data", "from-text", str(tmp_path / "t.txt"), "--out", str(tmp_path / "out"))
    assert again.returncode == 2 and "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    (tmp_path / "chat.json").write_text(json.dumps([{"image": "x.png", "conversations": [
        {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]))
    nothing = mmllm("data", "from-llava", str(tmp_path / "chat.json"), "--images", str(tmp_path),
                    "--out", str(tmp_path / "chat"))
    assert nothing.returncode == 2 and "every row was skipped" in nothing.stderr


@pytest.mark.parametrize("name, content, said", [
    ("caps.jsonl", "", "is empty"),
    ("caps.jsonl", "file,caption\na.png,red\n", "is not JSON lines"),
    ("caps.csv", "file,caption\n", "holds no caption rows, only a header"),
    ("caps.csv", "file,caption\na.png,\n", "none of its 1 rows names a file and a caption (empty caption 1)"),
])
def test_from_folder_with_a_captions_file_that_gives_nothing_exits_2_in_one_line(name, content, said, tmp_path,
                                                                                  capsys):
    from mmllm.cli.main import main

    image_file(tmp_path / "imgs" / "a.png")
    (tmp_path / name).write_text(content)
    assert main(["data", "from-folder", str(tmp_path / "imgs"), "--captions", str(tmp_path / name),
                 "--out", str(tmp_path / "caps")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err
    assert not (tmp_path / "caps").exists()
