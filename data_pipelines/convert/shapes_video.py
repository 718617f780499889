"""Clips of moving shapes, and questions one frame cannot answer: `mmllm data shapes --video`.

Each clip is 2 s of 16 frames (8 fps, an animated GIF, drawn by the shapes set's renderer) with two objects of
different shapes and colours. Each moves in a straight line, mostly along one axis. One is there from the start and the other
may appear later. Three kinds of question:
- `direction`: "Which way does the red star move?" (left, right, up, down); any one frame shows a position, not a
  motion.
- `order`: "Which appears first, the star or the square?" (asked only when one appears later; the middle frame
  usually shows both).
- `meet`: "Do the star and the square meet?" (whether their outlines touch in a frame where both are shown; yes and
  no drawn equally often).
Clips are written as chat shards, KEY.gif beside KEY.json, with every question in one conversation (and a
`questions` list with their types, for evaluation per type), as `mmllm data from-videos` writes them.
"""

from __future__ import annotations

import io
import json
import math
import random
import os
from pathlib import Path

from PIL import Image

from data_pipelines.convert.shapes import COLOURS, RADIUS, SHAPES, Scene, ShapeObject, render
from data_pipelines.convert.writers import DEFAULT_MAXCOUNT, ShardWriter, WriteStats

FRAMES, FPS = 16, 8
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
VIDEO_QUESTION_TYPES = ("direction", "order", "meet")


def _path(rng: random.Random, direction: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(start, end) centres, fractions of the side: 0.4-0.6 of the side along `direction`, a little across it."""
    dx, dy = DIRECTIONS[direction]
    travel, drift = rng.uniform(0.4, 0.6), rng.uniform(-0.1, 0.1)
    start_along = rng.uniform(0.15, 0.85 - travel)
    across = rng.uniform(0.2, 0.8)
    if dx:
        x0 = start_along if dx > 0 else 1 - start_along
        return (x0, across), (x0 + dx * travel, min(0.85, max(0.15, across + drift)))
    y0 = start_along if dy > 0 else 1 - start_along
    return (across, y0), (min(0.85, max(0.15, across + drift)), y0 + dy * travel)


def _draw_objects(rng: random.Random) -> list[dict]:
    shapes, colours = rng.sample(SHAPES, 2), rng.sample(tuple(COLOURS), 2)  # two objects told apart either way
    objects = []
    for index, (shape, colour) in enumerate(zip(shapes, colours)):
        direction = rng.choice(tuple(DIRECTIONS))
        start, end = _path(rng, direction)
        appears = 0 if index == 0 or rng.random() < 0.5 else rng.randint(4, 9)
        objects.append({"shape": shape, "colour": colour, "size": "small",
                        "direction": direction, "start": start, "end": end, "appears": appears})
    rng.shuffle(objects)
    return objects


def _position(obj: dict, frame: int) -> tuple[float, float]:
    t = frame / (FRAMES - 1)
    return tuple(a + (b - a) * t for a, b in zip(obj["start"], obj["end"]))


def _meet(a: dict, b: dict) -> bool:
    touch = 2 * RADIUS["small"] / 3 * 0.9  # two small objects' radii, in fractions of the side
    return any(math.dist(_position(a, f), _position(b, f)) < touch
               for f in range(max(a["appears"], b["appears"]), FRAMES))


def sample_clip(rng: random.Random) -> list[dict]:
    """Two moving objects; whether they meet is drawn first (half the clips), then objects drawn until it holds."""
    wanted = rng.random() < 0.5
    for _ in range(200):
        objects = _draw_objects(rng)
        if _meet(*objects) == wanted:
            return objects
    return objects


def clip_frames(objects: list[dict], image_size: int, background: tuple[int, int, int]) -> list[Image.Image]:
    frames = []
    for frame in range(FRAMES):
        shown = tuple(ShapeObject(o["shape"], o["colour"], o["size"], "center", *_position(o, frame))
                      for o in objects if frame >= o["appears"])
        frames.append(render(Scene(shown, background), image_size))
    return frames


def gif_bytes(frames: list[Image.Image]) -> bytes:
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=1000 // FPS, loop=0)
    return buffer.getvalue()


def clip_questions(objects: list[dict], rng: random.Random) -> list[dict]:
    a, b = objects
    mover = rng.choice(objects)
    asked = [{"question": f"Which way does the {mover['colour']} {mover['shape']} move?",
              "answer": mover["direction"], "type": "direction"}]
    if a["appears"] != b["appears"]:
        first = a if a["appears"] < b["appears"] else b
        asked.append({"question": f"Which appears first, the {a['shape']} or the {b['shape']}?",
                      "answer": f"the {first['shape']}", "type": "order"})
    asked.append({"question": f"Do the {a['shape']} and the {b['shape']} meet?",
                  "answer": "yes" if _meet(a, b) else "no", "type": "meet"})
    return asked


def generate_video_split(out_dir: str | os.PathLike, split: str, count: int, *, seed: int = 0, image_size: int = 48,
                         maxcount: int = DEFAULT_MAXCOUNT, overwrite: bool = False, report=print) -> WriteStats:
    """`count` clips of `split` as chat shards in out_dir/split/video/ (each depends only on seed, split, index)."""
    with ShardWriter(Path(out_dir) / split / "video", maxcount=maxcount, overwrite=overwrite, report=report) as out:
        for index in range(count):
            rng = random.Random(f"mmllm-shapes-video/{seed}/{split}/{index}")
            objects = sample_clip(rng)
            background = tuple(rng.randint(228, 255) for _ in range(3))
            asked = clip_questions(objects, rng)
            turns = []
            for i, qa in enumerate(asked):
                turns.append({"from": "human", "value": ("<video>\n" if i == 0 else "") + qa["question"]})
                turns.append({"from": "gpt", "value": qa["answer"]})
            record = {"conversations": turns, "questions": asked,
                      "objects": json.loads(json.dumps(objects))}  # tuples as lists
            out.write({"gif": gif_bytes(clip_frames(objects, image_size, background)), "json": record},
                      key=f"{index:09d}")
    return out.stats
