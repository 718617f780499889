"""The shapes dataset: procedurally drawn scenes of coloured shapes on a 3x3 grid, with captions and questions.

Each scene holds 1-4 objects (shape x colour x size), one per grid cell, jittered inside its cell, on a lightly
tinted background; it is drawn at 4x the output size and downsampled with LANCZOS so edges are anti-aliased.
Every scene gives a caption naming each object and where it is (cells in reading order) and a multi-turn chat
of short-answer questions (colour, shape at a cell, what is at a cell, counts, existence, spatial relation)
whose answers are one or two words, so VQA scoring is exact.

Splits: `train` and `val` never contain the HELD_OUT_PAIRS colour-shape combinations (not in images, not in
questions); every `test_compositional` scene contains at least one of them. Everything is a function of
(seed, split, index), so the same seed gives the same bytes.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import random
import re
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image, ImageDraw

from data_pipelines.convert.writers import DEFAULT_MAXCOUNT, ShardWriter, WriteStats

SHAPES = ("circle", "square", "triangle", "star", "diamond")
COLOURS = {  # well separated in hue and brightness, readable on a light background
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (238, 200, 0),
    "purple": (140, 60, 185),
    "orange": (250, 127, 14),
}
SIZES = ("small", "large")
CELLS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
CELL_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
# One pair per shape and per colour (orange keeps all five), so train still shows every shape and colour.
HELD_OUT_PAIRS = (("yellow", "circle"), ("purple", "square"), ("red", "triangle"), ("green", "star"),
                  ("blue", "diamond"))
ALL_PAIRS = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)
TRAIN_PAIRS = tuple(pair for pair in ALL_PAIRS if pair not in HELD_OUT_PAIRS)
SPLITS = ("train", "val", "test_compositional")
RELATIONS = ("to the left of", "to the right of", "above", "below")
QUESTION_TYPES = ("colour", "shape", "what", "count", "exists", "relation")
QUESTIONS_PER_IMAGE = 4
MAX_OBJECTS = 4
SUPERSAMPLE = 4  # drawn at 4x, then downsampled: anti-aliased edges
RADIUS = {"small": 0.24, "large": 0.38}  # object radius as a fraction of the cell side


@dataclass(frozen=True)
class ShapeObject:
    """One object: what it is, its grid cell, and its centre in the image (fractions of the side)."""

    shape: str
    colour: str
    size: str
    cell: str
    x: float
    y: float

    @property
    def row(self) -> int:
        return CELLS.index(self.cell) // 3

    @property
    def col(self) -> int:
        return CELLS.index(self.cell) % 3

    @property
    def description(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]  # in reading order of their cells
    background: tuple[int, int, int]


def scene_rng(seed: int, split: str, index: int) -> random.Random:
    """The generator of one scene: a string seed is hashed with SHA-512, stable across runs and machines."""
    return random.Random(f"mmllm-shapes/{seed}/{split}/{index}")


def sample_scene(rng: random.Random, split: str, rare_colour: tuple[str, float] | None = None,
                 spurious: tuple[str, str, float] | None = None) -> Scene:
    """1-4 objects in distinct cells; train/val avoid HELD_OUT_PAIRS, test_compositional includes one.

    rare_colour (colour, fraction) skews the train split: objects of that colour are drawn `fraction` times as
    often as the others (a deliberately biased training set, for `mmllm eval --group-by colour` to find).
    spurious (shape, colour, fraction) plants a correlation in the train split: each object of that shape has
    that colour with probability `fraction`, else one of the shape's other train colours (a bias to mitigate)."""
    count = rng.randint(1, MAX_OBJECTS)
    cells = sorted(rng.sample(range(len(CELLS)), count))
    if split == "test_compositional":
        pairs = [rng.choice(ALL_PAIRS) for _ in range(count)]
        pairs[rng.randrange(count)] = rng.choice(HELD_OUT_PAIRS)
    elif rare_colour is not None and split == "train":
        colour, fraction = rare_colour
        weights = [fraction if pair[0] == colour else 1.0 for pair in TRAIN_PAIRS]
        pairs = rng.choices(TRAIN_PAIRS, weights, k=count)
    elif spurious is not None and split == "train":
        shape, colour, fraction = spurious
        others = [c for c, s in TRAIN_PAIRS if s == shape and c != colour]
        pairs = [rng.choice(TRAIN_PAIRS) for _ in range(count)]
        pairs = [((colour if rng.random() < fraction else rng.choice(others)), s) if s == shape else (c, s)
                 for c, s in pairs]
    else:
        pairs = [rng.choice(TRAIN_PAIRS) for _ in range(count)]
    objects = []
    for cell, (colour, shape) in zip(cells, pairs):
        size = rng.choice(SIZES)
        # jitter the centre so the object stays inside its cell (a small margin left)
        slack = 0.5 - RADIUS[size] - 0.05
        x = (cell % 3 + 0.5 + rng.uniform(-slack, slack)) / 3
        y = (cell // 3 + 0.5 + rng.uniform(-slack, slack)) / 3
        objects.append(ShapeObject(shape, colour, size, CELLS[cell], round(x, 4), round(y, 4)))
    background = tuple(rng.randint(228, 255) for _ in range(3))
    return Scene(tuple(objects), background)


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape of radius r centred at (cx, cy) (circles are drawn as ellipses)."""
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if shape == "triangle":  # pointing up; the bounding box is centred on (cx, cy)
        cy += 0.25 * r
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":  # five points: ten vertices alternating between radius r and r / 2, first one up
        radii = [r if k % 2 == 0 else 0.5 * r for k in range(10)]
        angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for radius, a in zip(radii, angles)]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, image_size: int) -> Image.Image:
    """The scene as an RGB image of image_size x image_size pixels."""
    side = image_size * SUPERSAMPLE
    cell = side / 3
    canvas = Image.new("RGB", (side, side), scene.background)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        cx, cy, r = obj.x * side, obj.y * side, RADIUS[obj.size] * cell
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_outline(obj.shape, cx, cy, r), fill=fill)
    # reducing_gap=2: a 2x box reduction first, then LANCZOS for the last 2x; twice as fast as LANCZOS from 4x
    return canvas.resize((image_size, image_size), Image.Resampling.LANCZOS, reducing_gap=2.0)


def scene_from_records(objects: list[dict], background) -> Scene:
    """The Scene of objects in their json form (object_record), to draw it again (counterfactual redraws)."""
    return Scene(tuple(ShapeObject(o["shape"], o["colour"], o["size"], o["cell"], o["x"], o["y"]) for o in objects),
                 tuple(background))


def parse_spurious(text: str) -> tuple[str, str, float]:
    """"circle:red:0.95" -> ("circle", "red", 0.95); ValueError saying what a spurious spec is."""
    parts = text.split(":")
    try:
        shape, colour, fraction = parts[0], parts[1], float(parts[2])
    except (IndexError, ValueError):
        shape, colour, fraction = "", "", -1.0
    if len(parts) != 3 or shape not in SHAPES or colour not in COLOURS or not 0 <= fraction <= 1:
        raise ValueError(f"expected SHAPE:COLOUR:FRACTION with SHAPE one of {', '.join(SHAPES)}, COLOUR one of "
                         f"{', '.join(COLOURS)} and FRACTION in [0, 1], got {text!r}")
    if (colour, shape) not in TRAIN_PAIRS:
        raise ValueError(f"{colour} {shape} is held out of the train split (test_compositional); pick another pair")
    return shape, colour, fraction


def spurious_group(objects: list[dict], spurious: tuple[str, str, float]) -> str | None:
    """A scene's group under a planted bias: "red circle" when one of its circles is red, "other circle" when it
    has circles and none is red, None without a circle (`group` in the sample json: data.balance.by: group)."""
    shape, colour, _ = spurious
    colours = [o["colour"] for o in objects if o["shape"] == shape]
    if not colours:
        return None
    return f"{colour} {shape}" if colour in colours else f"other {shape}"


def caption(scene: Scene) -> str:
    """"a large red circle at the top left, a small blue square in the center." (cells in reading order)."""
    return ", ".join(f"a {obj.description} {CELL_PHRASES[obj.cell]}" for obj in scene.objects) + "."


# -- questions: each asker returns (question, answer, about) or None when the scene cannot support its type;
# `about` names the colour and shape the question is about, where it is about one (for results by group) --

def _referring_names(scene: Scene) -> dict[ShapeObject, str]:
    """Objects that a short phrase picks out unambiguously: "the star", else "the red star"."""
    names = {}
    for obj in scene.objects:
        if sum(o.shape == obj.shape for o in scene.objects) == 1:
            names[obj] = f"the {obj.shape}"
        elif sum((o.colour, o.shape) == (obj.colour, obj.shape) for o in scene.objects) == 1:
            names[obj] = f"the {obj.colour} {obj.shape}"
    return names


def _about(colour: str | None = None, shape: str | None = None) -> dict[str, str]:
    return {k: v for k, v in (("colour", colour), ("shape", shape)) if v is not None}


def _ask_colour(scene: Scene, rng: random.Random, pairs) -> tuple[str, str] | None:
    candidates = []
    for obj in scene.objects:
        if sum(o.shape == obj.shape for o in scene.objects) == 1:
            candidates.append((f"What colour is the {obj.shape}?", obj.colour, _about(obj.colour, obj.shape)))
        elif sum((o.size, o.shape) == (obj.size, obj.shape) for o in scene.objects) == 1:
            candidates.append((f"What colour is the {obj.size} {obj.shape}?", obj.colour,
                               _about(obj.colour, obj.shape)))
    return rng.choice(candidates) if candidates else None


def _ask_shape(scene: Scene, rng: random.Random, pairs) -> tuple[str, str]:
    obj = rng.choice(scene.objects)
    return f"What shape is {CELL_PHRASES[obj.cell]}?", obj.shape, _about(obj.colour, obj.shape)


def _ask_what(scene: Scene, rng: random.Random, pairs) -> tuple[str, str]:
    empty = [cell for cell in CELLS if all(obj.cell != cell for obj in scene.objects)]
    if empty and rng.random() < 0.3:
        return f"What is {CELL_PHRASES[rng.choice(empty)]}?", "nothing", {}
    obj = rng.choice(scene.objects)
    return f"What is {CELL_PHRASES[obj.cell]}?", f"{obj.colour} {obj.shape}", _about(obj.colour, obj.shape)


def _ask_count(scene: Scene, rng: random.Random, pairs) -> tuple[str, str]:
    by_shape = rng.random() < 0.5
    values = SHAPES if by_shape else tuple(COLOURS)
    present = sorted({obj.shape if by_shape else obj.colour for obj in scene.objects}, key=values.index)
    absent = [value for value in values if value not in present]
    value = rng.choice(absent) if absent and rng.random() < 0.2 else rng.choice(present)
    count = sum((obj.shape if by_shape else obj.colour) == value for obj in scene.objects)
    question = f"How many {value}s are there?" if by_shape else f"How many {value} objects are there?"
    return question, str(count), _about(shape=value) if by_shape else _about(colour=value)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _ask_exists(scene: Scene, rng: random.Random, pairs) -> tuple[str, str]:
    present = {(obj.colour, obj.shape) for obj in scene.objects}
    absent = [pair for pair in pairs if pair not in present]
    if rng.random() < 0.5 or not absent:
        obj = rng.choice(scene.objects)
        return f"Is there {_article(obj.colour)} {obj.colour} {obj.shape}?", "yes", _about(obj.colour, obj.shape)
    # half of the negatives share a colour or a shape with an object in the scene: binding, not presence
    near = [pair for pair in absent if any(pair[0] == c or pair[1] == s for c, s in present)]
    colour, shape = rng.choice(near if near and rng.random() < 0.5 else absent)
    return f"Is there {_article(colour)} {colour} {shape}?", "no", _about(colour, shape)


def _relation_holds(a: ShapeObject, relation: str, b: ShapeObject) -> bool:
    """Relations compare grid cells: objects in the same column are neither left nor right of each other."""
    if relation == "to the left of":
        return a.col < b.col
    if relation == "to the right of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    return a.row > b.row


def _ask_relation(scene: Scene, rng: random.Random, pairs) -> tuple[str, str] | None:
    names = _referring_names(scene)
    referable = [obj for obj in scene.objects if obj in names]
    if len(referable) < 2:
        return None
    by_answer: dict[bool, list[str]] = {True: [], False: []}  # every question this scene supports
    for a in referable:
        for b in referable:
            if a is not b:
                for relation in RELATIONS:
                    by_answer[_relation_holds(a, relation, b)].append(f"Is {names[a]} {relation} {names[b]}?")
    wanted = rng.random() < 0.5  # the answer is drawn first, so yes and no are balanced where possible
    if not by_answer[wanted]:
        wanted = not wanted
    return rng.choice(by_answer[wanted]), "yes" if wanted else "no", {}


ASKERS = {"colour": _ask_colour, "shape": _ask_shape, "what": _ask_what, "count": _ask_count,
          "exists": _ask_exists, "relation": _ask_relation}


# -- answering a question of this grammar from a scene's objects (for counterfactual questions) --

_NAME = r"the (?:(?P<{0}colour>\w+) )?(?P<{0}shape>\w+)"
_PATTERNS = (
    ("colour", re.compile(r"what colou?r is the (?:(?P<size>small|large) )?(?P<shape>\w+)")),
    ("shape", re.compile(r"what shape is (?P<phrase>.+)")),
    ("what", re.compile(r"what is (?P<phrase>.+)")),
    ("count_shape", re.compile(r"how many (?P<shape>\w+)s are there")),
    ("count_colour", re.compile(r"how many (?P<colour>\w+) objects are there")),
    ("exists", re.compile(r"is there an? (?P<colour>\w+) (?P<shape>\w+)")),
    ("relation", re.compile(f"is {_NAME.format('a_')} (?P<relation>{'|'.join(RELATIONS)}) {_NAME.format('b_')}")),
)
_PHRASE_CELLS = {phrase: cell for cell, phrase in CELL_PHRASES.items()}


def answer_from_objects(objects: list[dict], question: str) -> str | None:
    """The answer the generator would give to `question` about a scene of `objects` (their json records), or
    None when the question is not of this grammar or has no answer in the scene (an ambiguous "the circle", a
    colour asked of an empty cell). Used to know how a rewritten question should be answered."""
    text = " ".join(question.lower().strip().rstrip("?").split())
    for kind, pattern in _PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            return _answer(kind, match.groupdict(), objects)
    return None


def _answer(kind: str, slots: dict, objects: list[dict]) -> str | None:
    if kind == "colour":
        found = [o for o in objects if o["shape"] == slots["shape"] and slots["size"] in (None, o["size"])]
        return found[0]["colour"] if len(found) == 1 else None
    if kind in ("shape", "what"):
        cell = _PHRASE_CELLS.get(slots["phrase"])
        if cell is None:
            return None
        found = [o for o in objects if o["cell"] == cell]
        if not found:
            return "nothing" if kind == "what" else None
        return found[0]["shape"] if kind == "shape" else f"{found[0]['colour']} {found[0]['shape']}"
    if kind == "count_shape":
        return str(sum(o["shape"] == slots["shape"] for o in objects)) if slots["shape"] in SHAPES else None
    if kind == "count_colour":
        return str(sum(o["colour"] == slots["colour"] for o in objects)) if slots["colour"] in COLOURS else None
    if kind == "exists":
        if slots["colour"] not in COLOURS or slots["shape"] not in SHAPES:
            return None
        return "yes" if any((o["colour"], o["shape"]) == (slots["colour"], slots["shape"]) for o in objects) else "no"
    a, b = (_referred(objects, slots[f"{side}_colour"], slots[f"{side}_shape"]) for side in ("a", "b"))
    if a is None or b is None or a == b:
        return None
    return "yes" if _relation_holds(a, slots["relation"], b) else "no"


def _referred(objects: list[dict], colour: str | None, shape: str) -> ShapeObject | None:
    """The one object "the [colour] shape" names, or None when it names none or several."""
    found = [o for o in objects if o["shape"] == shape and colour in (None, o["colour"])]
    if len(found) != 1:
        return None
    o = found[0]
    return ShapeObject(o["shape"], o["colour"], o["size"], o["cell"], o["x"], o["y"])


def questions(scene: Scene, rng: random.Random, split: str, n: int = QUESTIONS_PER_IMAGE) -> list[dict]:
    """Up to n distinct questions of distinct types, in random order: [{"question", "answer", "type"}], plus the
    "colour" and "shape" the question is about where it is about one object or pair."""
    pairs = ALL_PAIRS if split == "test_compositional" else TRAIN_PAIRS
    asked = []
    for kind in rng.sample(QUESTION_TYPES, len(QUESTION_TYPES)):
        if len(asked) == n:
            break
        qa = ASKERS[kind](scene, rng, pairs)
        if qa is not None:
            asked.append({"question": qa[0], "answer": qa[1], "type": kind, **qa[2]})
    return asked


def chat_turns(asked: list[dict]) -> list[dict]:
    """The questions as one LLaVA conversation; the image marker leads the first question."""
    turns = []
    for i, qa in enumerate(asked):
        turns.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + qa["question"]})
        turns.append({"from": "gpt", "value": qa["answer"]})
    return turns


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def object_record(obj: ShapeObject) -> dict:
    """The json form of an object, as stored in shards and scenes.jsonl."""
    return {"shape": obj.shape, "colour": obj.colour, "size": obj.size, "cell": obj.cell,
            "row": obj.row, "col": obj.col, "x": obj.x, "y": obj.y}


def make_example(seed: int, split: str, index: int, image_size: int,
                 rare_colour: tuple[str, float] | None = None,
                 spurious: tuple[str, str, float] | None = None) -> dict:
    """Everything about scene `index` of `split`: png bytes, caption, objects, questions (the chats are
    built from the questions when written, see chat_groups). With a planted bias (spurious), in every split, the
    scene's `group` (spurious_group) and, on each question about an object of its shape, `spurious`: "red circle"
    or "other circle" (for `mmllm eval --group-by question_type,spurious`)."""
    rng = scene_rng(seed, split, index)
    scene = sample_scene(rng, split, rare_colour, spurious)
    asked = questions(scene, rng, split)
    objects = [object_record(obj) for obj in scene.objects]
    example = {
        "png": _png(render(scene, image_size)),
        "caption": caption(scene),
        "objects": objects,
        "background": list(scene.background),
        "questions": asked,
    }
    if spurious is not None:
        shape, colour, _ = spurious
        for qa in asked:
            if qa.get("shape") == shape and "colour" in qa:
                qa["spurious"] = f"{colour} {shape}" if qa["colour"] == colour else f"other {shape}"
        group = spurious_group(objects, spurious)
        if group is not None:
            example["group"] = group
    return example


def wrong_answer(qa: dict, objects: list[dict], rng: random.Random) -> str:
    """A plausible wrong answer to one question, for preference pairs: yes and no swapped, a count off by one, the
    colour or shape of another object in the scene (any other where the scene has none), another object for
    "what is at"."""
    answer, kind = qa["answer"], qa["type"]
    if answer in ("yes", "no"):
        return "no" if answer == "yes" else "yes"
    if kind == "count":
        count = int(answer)
        return str(count + 1 if count == 0 or rng.random() < 0.5 else count - 1)
    if kind in ("colour", "shape"):
        field, every = ("colour", tuple(COLOURS)) if kind == "colour" else ("shape", SHAPES)
        seen = sorted({o[field] for o in objects} - {answer}, key=every.index)
        return rng.choice(seen or [value for value in every if value != answer])
    present = sorted({f"{o['colour']} {o['shape']}" for o in objects} - {answer})  # kind "what"
    if answer == "nothing" or not present:
        present = present or [f"{c} {s}" for c, s in ALL_PAIRS if f"{c} {s}" != answer]
        return rng.choice(present)
    return rng.choice(present + ["nothing"])


def preference_rows(example: dict, seed: int, split: str, index: int) -> list[dict]:
    """Each question of a scene as a preference pair: its true answer chosen, a wrong one (wrong_answer) rejected;
    the prompt is the question alone after the image, as `mmllm eval` asks it."""
    rng = random.Random(f"{seed}/{split}/{index}/preference")
    return [{"prompt": [{"role": "user", "content": f"<image>\n{qa['question']}"}], "chosen": qa["answer"],
             "rejected": wrong_answer(qa, example["objects"], rng), "question_type": qa["type"]}
            for qa in example["questions"]]


def chat_groups(asked: list[dict], per_chat: int) -> list[list[dict]]:
    """The questions of one scene cut into conversations of at most per_chat questions (0: all in one)."""
    if per_chat <= 0 or per_chat >= len(asked):
        return [asked]
    return [asked[i : i + per_chat] for i in range(0, len(asked), per_chat)]


def generate_split(out_dir: str | os.PathLike, split: str, count: int, *, seed: int = 0, image_size: int = 64,
                   maxcount: int = DEFAULT_MAXCOUNT, overwrite: bool = False, workers: int = 1,
                   questions_per_chat: int = 0, rare_colour: tuple[str, float] | None = None,
                   spurious: tuple[str, str, float] | None = None, preferences: bool = False,
                   report=print) -> dict[str, WriteStats]:
    """Write `count` scenes of `split` to out_dir/split/{captions,chat}/ shards and scenes.jsonl (and, with
    preferences, each question as a preference pair in out_dir/split/preference/, preference_rows).

    The same key names a scene in both kinds of shards and in scenes.jsonl. With questions_per_chat > 0 a
    scene's questions are split over several chat samples, keyed KEY_0, KEY_1, ... (1: every question asked
    alone right after the image, as `mmllm eval` asks it). With workers > 1 scenes are drawn in worker
    processes; each scene depends only on (seed, split, index), so the bytes are the same.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    split_dir = Path(out_dir) / split
    captions = ShardWriter(split_dir / "captions", maxcount=maxcount, overwrite=overwrite, report=report)
    chats = ShardWriter(split_dir / "chat", maxcount=maxcount, overwrite=overwrite, report=report)
    pairs = (ShardWriter(split_dir / "preference", maxcount=maxcount, overwrite=overwrite, report=report)
             if preferences else nullcontext())
    draw = partial(make_example, seed, split, image_size=image_size, rare_colour=rare_colour, spurious=spurious)
    parallel = workers > 1 and count > 1
    pool = multiprocessing.get_context("fork").Pool(workers) if parallel else nullcontext()
    with pool, captions, chats, pairs, open(split_dir / "scenes.jsonl", "w", encoding="utf-8") as scenes:
        examples = pool.imap(draw, range(count), chunksize=64) if parallel else map(draw, range(count))
        for index, example in enumerate(examples):
            key = f"{index:09d}"
            group = {"group": example["group"]} if "group" in example else {}
            captions.write({"png": example["png"], "txt": example["caption"],
                            "json": {"objects": example["objects"], **group}}, key=key)
            groups = chat_groups(example["questions"], questions_per_chat)
            for part, asked in enumerate(groups):
                chats.write({"png": example["png"], "json": {
                    "conversations": chat_turns(asked), "questions": asked, "objects": example["objects"], **group}},
                    key=key if len(groups) == 1 else f"{key}_{part}")
            if preferences:
                for part, row in enumerate(preference_rows(example, seed, split, index)):
                    pairs.write_preference({**row, **group}, image=example["png"], key=f"{key}_{part}")
            record = {"key": key, "caption": example["caption"], "objects": example["objects"],
                      "background": example["background"], "questions": example["questions"]}
            scenes.write(json.dumps(record) + "\n")
    return {"captions": captions.stats, "chat": chats.stats, **({"preference": pairs.stats} if preferences else {})}


def generate_shapes(out_dir: str | os.PathLike, *, train: int = 8000, val: int = 500, test: int = 500,
                    image_size: int = 64, seed: int = 0, maxcount: int = DEFAULT_MAXCOUNT,
                    overwrite: bool = False, workers: int = 1, questions_per_chat: int = 0,
                    rare_colour: tuple[str, float] | None = None,
                    spurious: tuple[str, str, float] | None = None, preferences: bool = False,
                    report=print) -> dict[str, dict[str, WriteStats]]:
    """All three splits plus out_dir/shapes.json (the settings and vocabulary, for evaluation and reuse)."""
    if rare_colour is not None and (rare_colour[0] not in COLOURS or not 0 <= rare_colour[1] <= 1):
        raise ValueError(f"a rare colour is one of {', '.join(COLOURS)} with a fraction in [0, 1], "
                         f"got {rare_colour[0]}:{rare_colour[1]}")
    if spurious is not None and rare_colour is not None:
        raise ValueError("a rare colour and a spurious correlation are two different skews: give one")
    if image_size < 16:
        raise ValueError(f"image size must be at least 16 pixels, got {image_size}")
    if min(train, val, test) < 0:
        raise ValueError("split sizes must not be negative")
    out = Path(out_dir)
    stats = {split: generate_split(out, split, count, seed=seed, image_size=image_size, maxcount=maxcount,
                                   overwrite=overwrite, workers=workers, questions_per_chat=questions_per_chat,
                                   rare_colour=rare_colour, spurious=spurious, preferences=preferences,
                                   report=report)
             for split, count in zip(SPLITS, (train, val, test))}
    settings = {
        "seed": seed, "image_size": image_size, "counts": dict(zip(SPLITS, (train, val, test))),
        "questions_per_chat": questions_per_chat,
        "rare_colour": list(rare_colour) if rare_colour else None,
        "spurious": list(spurious) if spurious else None,
        "shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES), "cells": list(CELLS),
        "held_out_pairs": [list(pair) for pair in HELD_OUT_PAIRS], "question_types": list(QUESTION_TYPES),
    }
    (out / "shapes.json").write_text(json.dumps(settings, indent=1) + "\n")
    return stats
