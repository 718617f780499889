"""Clips in chat shards (data_pipelines.video): frames drawn at the right timestamps from mp4, webm and gif, a video
sample encoded and batched exactly as the multi-image chat it becomes, and a corrupt or too long clip skipped and
counted."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from data_pipelines.chat.tokenizer import train_tokenizer
from data_pipelines.convert.writers import ShardWriter
from data_pipelines.processor import Processor
from data_pipelines.read.bad_samples import BadSampleHandler
from data_pipelines.read.shards import read_samples
from data_pipelines.video import VideoOptions, decode_frames, frames_text

av = pytest.importorskip("av")  # mmllm[video]; the dev extras install it, so CI runs these

FPS, COUNT = 10, 20  # a 2 s clip whose frame k is red 12 k


def clip(container: str = "mp4", count: int = COUNT) -> bytes:
    codec, pixels = {"mp4": ("mpeg4", "yuv420p"), "webm": ("libvpx", "yuv420p"), "gif": ("gif", "rgb8")}[container]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=FPS)
        stream.width = stream.height = 32
        stream.pix_fmt = pixels
        for k in range(count):
            image = Image.new("RGB", (32, 32), (12 * k, 255 - 12 * k, 100))
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize("container", ["mp4", "webm", "gif"])
def test_frames_are_the_ones_showing_at_the_middles_of_equal_spans(container):
    frames, duration = decode_frames(clip(container), VideoOptions(frames=4))
    assert duration == pytest.approx(2.0)
    # spans of 0.5 s: middles 0.25, 0.75, 1.25, 1.75 s show frames 2, 7, 12, 17 (shown from 0.2, 0.7, ... s)
    assert [round(time, 2) for time, _ in frames] == [0.2, 0.7, 1.2, 1.7]
    for (_, image), k in zip(frames, (2, 7, 12, 17)):
        assert image.mode == "RGB" and abs(image.getpixel((16, 16))[0] - 12 * k) <= 16  # lossy codecs


def test_fps_takes_one_frame_every_period_up_to_the_count():
    frames, _ = decode_frames(clip(), VideoOptions(frames=8, fps=2))
    assert [round(time, 2) for time, _ in frames] == [0.2, 0.7, 1.2, 1.7]  # 2 s at 2 fps: 4 frames
    assert len(decode_frames(clip(), VideoOptions(frames=3, fps=5))[0]) == 3


def _shards(folder, samples: dict[str, dict]):
    with ShardWriter(folder, report=lambda *_: None) as writer:
        for key, members in samples.items():
            writer.write(members, key=key)
    return folder


def test_a_video_chat_encodes_and_batches_as_the_multi_image_chat_it_becomes(tmp_path):
    turns = [{"from": "human", "value": "Which way does the colour change?"}, {"from": "gpt", "value": "to red"}]
    folder = _shards(tmp_path / "clips", {"a": {"mp4": clip(), "json": {"conversations": turns}}})
    (sample,) = read_samples(folder, "chat")
    frames, duration = decode_frames(clip(), VideoOptions())
    times = [time for time, _ in frames]
    assert len(sample.images) == 8 and sample.meta["frame_times"] == times
    assert sample.conversation[0]["content"] == frames_text(times, duration) + "\nWhich way does the colour change?"
    texts = [turn["content"] for turn in sample.conversation] * 5
    processor = Processor(train_tokenizer(texts, vocab_size=300), image_size=16, tokens_per_image=4)
    video = processor.encode_sample(sample)
    as_images = processor.encode_conversation(sample.conversation, [image for _, image in frames])
    assert video.input_ids == as_images.input_ids and video.labels == as_images.labels
    assert torch.equal(video.pixel_values, as_images.pixel_values) and video.num_images == 8


def test_a_corrupt_or_too_long_clip_is_skipped_and_counted(tmp_path):
    turns = [{"from": "human", "value": "What moves?"}, {"from": "gpt", "value": "a star"}]
    folder = _shards(tmp_path / "clips", {
        "good": {"gif": clip("gif"), "json": {"conversations": turns}},
        "corrupt": {"mp4": b"\x00\x00\x00\x18ftypmp42" + bytes(200), "json": {"conversations": turns}},
        "long": {"webm": clip("webm", count=60), "json": {"conversations": turns}},  # 6 s
    })
    handler = BadSampleHandler()
    samples = list(read_samples(folder, "chat", handler))
    assert len(samples) == 2 and handler.counts["corrupt video"] == 1
    from data_pipelines.read.shards import decode_samples, parse_samples, tar_samples, expand_shards

    limited = BadSampleHandler()
    kept = list(decode_samples(parse_samples(tar_samples(expand_shards(folder), limited), "chat", limited), limited,
                               video=VideoOptions(max_seconds=3)))
    assert [s.key for s in kept] == ["good"] and limited.counts["video too long"] == 1


def test_from_videos_writes_clips_beside_their_chats_and_counts_bad_rows(tmp_path, capsys):
    import json

    from mmllm.cli.main import main

    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.mp4").write_bytes(clip())
    (clips / "b.gif").write_bytes(clip("gif"))
    (clips / "broken.webm").write_bytes(b"not a video")
    (clips / "c.avi").write_bytes(b"x")
    rows = [
        {"video": "a.mp4", "conversations": [{"from": "human", "value": "<video>\nWhich colour comes last?"},
                                             {"from": "gpt", "value": "red"}], "id": "a"},
        {"video": "b.gif", "question": "Does it get redder?", "answer": "yes"},
        {"video": "gone.mp4", "question": "q", "answer": "a"},
        {"video": "broken.webm", "question": "q", "answer": "a"},
        {"video": "c.avi", "question": "q", "answer": "a"},
        {"video": "a.mp4", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    assert main(["data", "from-videos", str(tmp_path / "rows.jsonl"), "--videos", str(clips),
                 "--out", str(tmp_path / "shards")]) == 0
    said = capsys.readouterr().out
    for reason in ("missing video", "corrupt video", "video format not mp4, webm or gif", "image marker"):
        assert reason in said, said
    samples = list(read_samples(tmp_path / "shards", "chat"))
    assert [len(s.images) for s in samples] == [8, 8] and samples[0].meta["id"] == "a"
    assert samples[1].conversation[0]["content"].startswith("8 frames from a 2.0 s clip:\nFrame at 0.1 s: <image>")


def test_shapes_video_clips_show_the_motion_their_questions_ask_about(tmp_path):
    from data_pipelines.convert.shapes import COLOURS
    from data_pipelines.convert.shapes_video import generate_video_split

    generate_video_split(tmp_path, "train", 12, image_size=48, report=lambda *_: None)
    samples = list(read_samples(tmp_path / "train" / "video", "chat"))
    assert len(samples) == 12 and all(len(s.images) == 8 for s in samples)
    types = {q["type"] for s in samples for q in s.meta["questions"]}
    assert {"direction", "meet"} <= types
    for sample in samples:
        (asked,) = [q for q in sample.meta["questions"] if q["type"] == "direction"]
        mover = next(o for o in sample.meta["objects"] if asked["question"].endswith(f"{o['colour']} {o['shape']} move?"))
        first, last = (_centroid(sample.images[i], COLOURS[mover["colour"]]) for i in (0, -1))
        if first is None or last is None:
            continue  # appears late or drawn over: the other frames still carry it
        dx, dy = last[0] - first[0], last[1] - first[1]
        seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert seen == asked["answer"], (sample.key, first, last)


def _centroid(image, colour, tolerance: int = 40):
    pixels = [(x, y) for x in range(image.width) for y in range(image.height)
              if all(abs(a - b) <= tolerance for a, b in zip(image.getpixel((x, y)), colour))]
    if len(pixels) < 4:
        return None
    return sum(x for x, _ in pixels) / len(pixels), sum(y for _, y in pixels) / len(pixels)
