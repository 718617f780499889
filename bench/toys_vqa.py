"""Write a second image-QA set, unlike the shapes demo in every way a recipe could overfit to, as LLaVA JSON + JPEGs.

    python bench/toys_vqa.py --out data/toys-raw --train 8000 --val 500
    mmllm data from-llava data/toys-raw/train.json --images data/toys-raw --out data/toys/train/chat
    mmllm data from-llava data/toys-raw/val.json --images data/toys-raw --out data/toys/val/chat

Other objects (rings, crosses, bars, hearts, arrows), other colours, no grid: 1-5 objects of continuous size
at free, non-overlapping positions on a noisy two-colour gradient; 64 px JPEG images; three-turn conversations
asking colour, count, left/right, largest object and existence. As in many real chat sets, the first question
is always of one kind (the colour of a shape, where the scene has a shape that occurs once) and the others come
after it, so `mmllm eval --turns alone` asks most questions in a position training never showed them in. It imports nothing from mmllm: it stands for
data a user brings, and is checked the way a user would check it (`from-llava`, then `mmllm fit` and `eval`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("ring", "cross", "bar", "heart", "arrow")
PLURALS = {"ring": "rings", "cross": "crosses", "bar": "bars", "heart": "hearts", "arrow": "arrows"}
COLOURS = {"pink": (236, 90, 170), "cyan": (0, 185, 205), "brown": (130, 75, 30), "black": (25, 25, 25),
           "lime": (120, 215, 30)}
SIZE = 64
SUPERSAMPLE = 4


def place_objects(rng: random.Random) -> list[dict]:
    """1-5 objects with centres and radii (fractions of the side) that do not overlap."""
    objects = []
    for _ in range(rng.randint(1, 5)):
        for _attempt in range(50):
            r = rng.uniform(0.07, 0.16)
            x, y = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
            if all(math.hypot(x - o["x"], y - o["y"]) > r + o["r"] + 0.02 for o in objects):
                objects.append({"shape": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)),
                                "x": x, "y": y, "r": r})
                break
    return objects


def draw_object(draw: ImageDraw.ImageDraw, obj: dict, side: int) -> None:
    cx, cy, r, fill = obj["x"] * side, obj["y"] * side, obj["r"] * side, COLOURS[obj["colour"]]
    if obj["shape"] == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, int(r * 0.35)))
    elif obj["shape"] == "cross":
        w = r * 0.35
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif obj["shape"] == "bar":
        draw.rectangle((cx - r, cy - r * 0.4, cx + r, cy + r * 0.4), fill=fill)
    elif obj["shape"] == "heart":
        h = r * 0.55
        draw.ellipse((cx - r, cy - r * 0.7, cx, cy - r * 0.7 + 2 * h), fill=fill)
        draw.ellipse((cx, cy - r * 0.7, cx + r, cy - r * 0.7 + 2 * h), fill=fill)
        draw.polygon([(cx - r * 0.97, cy - r * 0.1), (cx + r * 0.97, cy - r * 0.1), (cx, cy + r)], fill=fill)
    else:  # arrow pointing right
        draw.rectangle((cx - r, cy - r * 0.22, cx + r * 0.1, cy + r * 0.22), fill=fill)
        draw.polygon([(cx + r * 0.1, cy - r * 0.6), (cx + r, cy), (cx + r * 0.1, cy + r * 0.6)], fill=fill)


def render(objects: list[dict], rng: random.Random) -> Image.Image:
    side = SIZE * SUPERSAMPLE
    top = [rng.randint(200, 250) for _ in range(3)]
    bottom = [rng.randint(170, 230) for _ in range(3)]
    gradient = Image.linear_gradient("L").resize((side, side))
    canvas = Image.composite(Image.new("RGB", (side, side), tuple(bottom)), Image.new("RGB", (side, side), tuple(top)),
                             gradient)
    noise = Image.effect_noise((side, side), 24).convert("RGB")
    canvas = Image.blend(canvas, noise, 0.08)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        draw_object(draw, obj, side)
    return canvas.filter(ImageFilter.GaussianBlur(1)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def candidate_questions(objects: list[dict], rng: random.Random) -> list[tuple[str, str]]:
    """Every question type this scene supports, one question each, with one-word answers."""
    asked = []
    unique = [o for o in objects if sum(p["shape"] == o["shape"] for p in objects) == 1]
    if unique:
        obj = rng.choice(unique)
        asked.append((f"What colour is the {obj['shape']}?", obj["colour"]))
    shape = rng.choice(SHAPES)
    count = sum(o["shape"] == shape for o in objects)
    asked.append((f"How many {PLURALS[shape]} are there?", str(count)))
    pairs = [(a, b) for a in unique for b in unique if a is not b and abs(a["x"] - b["x"]) > 0.1]
    if pairs:
        a, b = rng.choice(pairs)
        asked.append((f"Is the {a['shape']} left of the {b['shape']}?", "yes" if a["x"] < b["x"] else "no"))
    by_size = sorted(objects, key=lambda o: o["r"], reverse=True)
    if len(by_size) >= 2 and by_size[0]["r"] > by_size[1]["r"] * 1.25:
        asked.append(("Which shape is the largest?", by_size[0]["shape"]))
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    if rng.random() < 0.5:
        obj = rng.choice(objects)
        colour, shape = obj["colour"], obj["shape"]
    present = any((o["colour"], o["shape"]) == (colour, shape) for o in objects)
    asked.append((f"Is there a {colour} {shape}?", "yes" if present else "no"))
    return asked


def write_split(out: Path, split: str, count: int, seed: int) -> None:
    (out / split).mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        rng = random.Random(f"toys/{seed}/{split}/{index}")
        objects = place_objects(rng)
        image_path = f"{split}/{index:06d}.jpg"
        render(objects, rng).save(out / image_path, quality=90)
        candidates = candidate_questions(objects, rng)
        first = [c for c in candidates if c[0].startswith("What colour")][:1]  # the opening question, if any
        rest = [c for c in candidates if c not in first]
        asked = first + rng.sample(rest, k=min(3 - len(first), len(rest)))
        conversations = []
        for turn, (question, answer) in enumerate(asked):
            conversations.append({"from": "human", "value": ("<image>\n" if turn == 0 else "") + question})
            conversations.append({"from": "gpt", "value": answer})
        rows.append({"id": f"{split}-{index:06d}", "image": image_path, "conversations": conversations})
    (out / f"{split}.json").write_text(json.dumps(rows))
    print(f"wrote {count} conversations to {out / split}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    write_split(out, "train", args.train, args.seed)
    write_split(out, "val", args.val, args.seed)


if __name__ == "__main__":
    main()
