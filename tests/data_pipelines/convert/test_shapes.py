"""The shapes dataset: determinism, compositional split, captions and answers checked against the objects."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from data_pipelines.read.shards import parse_sample
from data_pipelines.convert.shapes import (CELL_PHRASES, CELLS, COLOURS, HELD_OUT_PAIRS, SHAPES, SPLITS, answer_from_objects,
                                   generate_shapes, make_example, questions, sample_scene, scene_rng)

PHRASE_TO_CELL = {phrase: cell for cell, phrase in CELL_PHRASES.items()}


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def shard_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in json.loads((folder / "sizes.json").read_text()):
        with tarfile.open(folder / shard) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    generate_shapes(out, train=12, val=4, test=6, image_size=32, seed=7, maxcount=5, report=None)
    return out


# -- determinism --

def test_same_seed_gives_identical_bytes_and_workers_do_not_change_them(small_dataset, tmp_path):
    generate_shapes(tmp_path / "again", train=12, val=4, test=6, image_size=32, seed=7, maxcount=5,
                    workers=2, report=None)
    assert all_files(tmp_path / "again") == all_files(small_dataset)


def test_another_seed_gives_other_scenes(small_dataset, tmp_path):
    generate_shapes(tmp_path / "other", train=12, val=4, test=6, image_size=32, seed=8, maxcount=5, report=None)
    ours, theirs = all_files(small_dataset), all_files(tmp_path / "other")
    assert ours.keys() == theirs.keys()
    assert ours["train/scenes.jsonl"] != theirs["train/scenes.jsonl"]


# -- layout --

def test_every_split_has_caption_and_chat_shards_with_the_contract_members(small_dataset):
    for split, count in zip(SPLITS, (12, 4, 6)):
        captions = shard_samples(small_dataset / split / "captions")
        chats = shard_samples(small_dataset / split / "chat")
        assert sorted(captions) == sorted(chats) == [f"{i:09d}" for i in range(count)]
        assert sum(json.loads((small_dataset / split / "chat" / "sizes.json").read_text()).values()) == count
        scenes = [json.loads(line) for line in (small_dataset / split / "scenes.jsonl").read_text().splitlines()]
        assert [scene["key"] for scene in scenes] == sorted(chats)
        for scene in scenes:
            caption, chat = captions[scene["key"]], chats[scene["key"]]
            assert set(caption) == {"png", "txt", "json"} and set(chat) == {"png", "json"}
            assert caption["png"] == chat["png"]
            with Image.open(io.BytesIO(caption["png"])) as image:
                assert (image.format, image.size, image.mode) == ("PNG", (32, 32), "RGB")
            assert caption["txt"].decode() == scene["caption"]
            record = json.loads(chat["json"])
            assert record["objects"] == scene["objects"] and record["questions"] == scene["questions"]
            turns = record["conversations"]
            assert [turn["from"] for turn in turns] == ["human", "gpt"] * len(record["questions"])
            assert [turn["value"] for turn in turns[1::2]] == [qa["answer"] for qa in record["questions"]]
            assert turns[0]["value"] == "<image>\n" + record["questions"][0]["question"]
            assert all("<image>" not in turn["value"] for turn in turns[1:])


def test_shards_parse_with_the_shard_reader(small_dataset):
    for key, members in shard_samples(small_dataset / "train" / "chat").items():
        sample = parse_sample("chat", {"__key__": key, **members})
        assert len(sample.images) == 1 and sample.conversation[0]["role"] == "user"
    for key, members in shard_samples(small_dataset / "train" / "captions").items():
        sample = parse_sample("caption", {"__key__": key, **members})
        assert sample.conversation[-1]["content"] == members["txt"].decode()


def test_settings_file_records_the_held_out_pairs(small_dataset):
    settings = json.loads((small_dataset / "shapes.json").read_text())
    assert settings["seed"] == 7 and settings["counts"] == {"train": 12, "val": 4, "test_compositional": 6}
    assert [tuple(pair) for pair in settings["held_out_pairs"]] == list(HELD_OUT_PAIRS)


# -- the compositional split --

def test_train_and_val_never_show_or_mention_a_held_out_pair_and_every_test_scene_has_one():
    held_out_phrases = [f"{colour} {shape}" for colour, shape in HELD_OUT_PAIRS]
    for split in ("train", "val"):
        for index in range(300):
            example = make_example(0, split, index, 16)
            assert not {(o["colour"], o["shape"]) for o in example["objects"]} & set(HELD_OUT_PAIRS)
            texts = [example["caption"]] + [qa["question"] + " " + qa["answer"] for qa in example["questions"]]
            assert not any(phrase in text for phrase in held_out_phrases for text in texts)
    for index in range(300):
        scene = sample_scene(scene_rng(0, "test_compositional", index), "test_compositional")
        assert {(o.colour, o.shape) for o in scene.objects} & set(HELD_OUT_PAIRS)


def test_train_still_shows_every_shape_and_every_colour():
    seen = Counter()
    for index in range(300):
        for obj in sample_scene(scene_rng(0, "train", index), "train").objects:
            seen[obj.shape] += 1
            seen[obj.colour] += 1
    assert set(SHAPES) | set(COLOURS) <= set(seen)


# -- captions, answers and pixels against the recorded objects --

def test_caption_names_every_object_with_its_cell_in_reading_order():
    pattern = re.compile(r"a (small|large) (\w+) (\w+) (.+)")
    for index in range(200):
        example = make_example(1, "train", index, 16)
        assert example["caption"].endswith(".")
        described = [pattern.fullmatch(part).groups() for part in example["caption"][:-1].split(", ")]
        objects = example["objects"]
        assert [(size, colour, shape, PHRASE_TO_CELL[phrase]) for size, colour, shape, phrase in described] == [
            (o["size"], o["colour"], o["shape"], o["cell"]) for o in objects]
        assert [CELLS.index(o["cell"]) for o in objects] == sorted(CELLS.index(o["cell"]) for o in objects)


def _only(objects: list[dict], **wanted) -> dict:
    matches = [o for o in objects if all(o[k] == v for k, v in wanted.items() if v is not None)]
    assert len(matches) == 1, f"{wanted} does not name exactly one object"
    return matches[0]


def expected_answer(question: str, objects: list[dict]) -> str:
    """The answer recomputed from the object records, parsing the question text."""
    if m := re.fullmatch(r"What colour is the (?:(small|large) )?(\w+)\?", question):
        return _only(objects, size=m[1], shape=m[2])["colour"]
    if m := re.fullmatch(r"What shape is (.+)\?", question):
        return _only(objects, cell=PHRASE_TO_CELL[m[1]])["shape"]
    if m := re.fullmatch(r"What is (.+)\?", question):
        here = [o for o in objects if o["cell"] == PHRASE_TO_CELL[m[1]]]
        return f"{here[0]['colour']} {here[0]['shape']}" if here else "nothing"
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return str(sum(o["shape"] == m[1] for o in objects))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(o["colour"] == m[1] for o in objects))
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", question):
        return "yes" if any((o["colour"], o["shape"]) == (m[1], m[2]) for o in objects) else "no"
    relation = r"(to the left of|to the right of|above|below)"
    if m := re.fullmatch(rf"Is the (?:(\w+) )?(\w+) {relation} the (?:(\w+) )?(\w+)\?", question):
        a, b = _only(objects, colour=m[1], shape=m[2]), _only(objects, colour=m[4], shape=m[5])
        holds = {"to the left of": a["col"] < b["col"], "to the right of": a["col"] > b["col"],
                 "above": a["row"] < b["row"], "below": a["row"] > b["row"]}[m[3]]
        return "yes" if holds else "no"
    raise AssertionError(f"unexpected question {question!r}")


@pytest.mark.parametrize("split", SPLITS)
def test_every_answer_follows_from_the_recorded_objects(split):
    types = Counter()
    for index in range(250):
        example = make_example(2, split, index, 16)
        assert len({qa["question"] for qa in example["questions"]}) == len(example["questions"]) >= 3
        for qa in example["questions"]:
            assert qa["answer"] == expected_answer(qa["question"], example["objects"]), qa
            assert len(qa["answer"].split()) <= 2
            types[qa["type"]] += 1
    assert set(types) == {"colour", "shape", "what", "count", "exists", "relation"}


@pytest.mark.parametrize("split", SPLITS)
def test_answers_from_objects_agree_with_the_generator_and_the_reference(split):
    for index in range(200):
        example = make_example(5, split, index, 16)
        for qa in example["questions"]:
            assert answer_from_objects(example["objects"], qa["question"]) == qa["answer"], qa


def test_answers_from_objects_for_rewritten_questions_and_none_where_the_scene_has_no_answer():
    objects = [{"shape": s, "colour": c, "size": z, "cell": cell, "row": CELLS.index(cell) // 3,
                "col": CELLS.index(cell) % 3, "x": 0.5, "y": 0.5}
               for s, c, z, cell in (("circle", "red", "small", "top left"), ("circle", "blue", "large", "right"),
                                     ("star", "green", "small", "bottom"))]
    cases = {
        "How many blue objects are there?": "1", "How many purple objects are there?": "0",
        "How many circles are there?": "2", "How many squares are there?": "0",
        "Is there a blue circle?": "yes", "Is there an orange circle?": "no",
        "What colour is the star?": "green", "What colour is the large circle?": "blue",
        "What is at the top left?": "red circle", "What is in the center?": "nothing",
        "What shape is at the bottom?": "star",
        "Is the red circle to the left of the blue circle?": "yes", "Is the star above the red circle?": "no",
        "Is the star below the red circle?": "yes",
        # no answer in this scene: two circles, an empty cell's shape, objects that do not exist, other grammar
        "What colour is the circle?": None, "What shape is in the center?": None, "What colour is the square?": None,
        "Is the square to the left of the star?": None, "Is there a pink circle?": None, "Why is the sky blue?": None,
    }
    for question, answer in cases.items():
        assert answer_from_objects(objects, question) == answer, question


def test_questions_name_the_colour_and_shape_they_are_about():
    for index in range(200):
        example = make_example(6, "train", index, 16)
        for qa in example["questions"]:
            words = [word[:-1] if word[:-1] in SHAPES else word for word in re.findall(r"\w+", qa["question"])]
            named = [word for word in words if word in COLOURS or word in SHAPES]  # "squares" names a square
            if qa["type"] in ("colour", "shape") or (qa["type"] == "what" and qa["answer"] != "nothing"):
                colour, shape = (qa["answer"], qa["shape"]) if qa["type"] == "colour" else (qa["colour"], qa["shape"])
                assert (colour, shape) in {(o["colour"], o["shape"]) for o in example["objects"]}, qa
            if qa["type"] == "exists":
                assert [qa["colour"], qa["shape"]] == named, qa
            if qa["type"] == "count":
                assert [qa.get("colour") or qa.get("shape")] == named and len(qa) == 4, qa
            if qa["type"] == "relation" or qa["answer"] == "nothing":
                assert "colour" not in qa and "shape" not in qa, qa


def test_a_rare_colour_is_rare_in_train_only_and_leaves_the_other_splits_unchanged():
    def share(split, rare):
        objects = [o for i in range(400) for o in make_example(8, split, i, 16, rare_colour=rare)["objects"]]
        return sum(o["colour"] == "purple" for o in objects) / len(objects)

    assert share("train", None) > 0.10  # 4 of the 25 training pairs are purple: ~16%
    assert share("train", ("purple", 0.1)) < 0.05  # weighted 0.1: ~2%
    assert share("train", ("purple", 0.0)) == 0
    for split in ("val", "test_compositional"):
        assert make_example(8, split, 3, 16, rare_colour=("purple", 0.1)) == make_example(8, split, 3, 16)


def test_yes_no_answers_are_balanced():
    answers = {"exists": Counter(), "relation": Counter()}
    for index in range(600):
        rng = scene_rng(3, "train", index)
        for qa in questions(sample_scene(rng, "train"), rng, "train"):
            if qa["type"] in answers:
                answers[qa["type"]][qa["answer"]] += 1
    for kind, counts in answers.items():
        assert set(counts) == {"yes", "no"}
        assert 0.4 <= counts["yes"] / (counts["yes"] + counts["no"]) <= 0.6, (kind, counts)


def test_where_what_question_answers_nothing_sometimes():
    answers = Counter(qa["answer"] == "nothing" for index in range(300)
                      for qa in make_example(4, "train", index, 16)["questions"] if qa["type"] == "what")
    assert answers[True] > 0 and answers[False] > answers[True]


def test_each_object_centre_pixel_has_its_colour():
    for index in range(40):
        example = make_example(5, "train", index, 64)
        with Image.open(io.BytesIO(example["png"])) as image:
            image = image.convert("RGB")
            for obj in example["objects"]:
                pixel = image.getpixel((int(obj["x"] * 64), int(obj["y"] * 64)))
                assert max(abs(p - c) for p, c in zip(pixel, COLOURS[obj["colour"]])) < 40, (obj, pixel)
            corner = image.getpixel((0, 0))
            assert corner == tuple(example["background"]) and min(corner) >= 200  # lightly tinted


# -- command line --

def test_cli_generates_small_dataset_refuses_to_overwrite_then_overwrites_identically(tmp_path):
    command = [sys.executable, "-m", "mmllm.cli.main", "data", "shapes", "--out", str(tmp_path / "d"),
               "--train", "6", "--val", "2", "--test", "3", "--image-size", "32", "--seed", "3"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert f"wrote 6 samples in 1 shards to {tmp_path / 'd' / 'train' / 'chat'}" in first.stdout.splitlines()
    assert first.stdout.splitlines()[-1].startswith("generated 11 scenes in ")
    written = all_files(tmp_path / "d")
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr and len(again.stderr.splitlines()) == 1
    replaced = subprocess.run(command + ["--overwrite", "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert replaced.returncode == 0, replaced.stderr
    assert all_files(tmp_path / "d") == written


def test_questions_per_chat_splits_each_scene_into_single_question_chats(small_dataset, tmp_path):
    generate_shapes(tmp_path / "single", train=12, val=4, test=6, image_size=32, seed=7, maxcount=5,
                    questions_per_chat=1, report=None)
    whole = shard_samples(small_dataset / "train" / "chat")
    split = shard_samples(tmp_path / "single" / "train" / "chat")
    expected_keys = [f"{key}_{i}" for key, members in whole.items()
                     for i in range(len(json.loads(members["json"])["questions"]))]
    assert sorted(split) == sorted(expected_keys)
    for key, members in whole.items():
        for i, qa in enumerate(json.loads(members["json"])["questions"]):
            part = split[f"{key}_{i}"]
            assert part["png"] == members["png"]
            turns = json.loads(part["json"])["conversations"]
            assert turns == [{"from": "human", "value": "<image>\n" + qa["question"]},
                             {"from": "gpt", "value": qa["answer"]}]
    # captions and scenes are the same whatever the chat layout
    assert all_files(tmp_path / "single" / "train" / "captions") == all_files(small_dataset / "train" / "captions")
    assert (tmp_path / "single" / "train" / "scenes.jsonl").read_bytes() == \
        (small_dataset / "train" / "scenes.jsonl").read_bytes()


def test_cli_questions_per_chat_two_gives_two_chats_per_four_question_scene(tmp_path):
    command = [sys.executable, "-m", "mmllm.cli.main", "data", "shapes", "--out", str(tmp_path / "d"),
               "--train", "5", "--val", "1", "--test", "1", "--image-size", "32", "--questions-per-chat", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    scenes = [json.loads(line) for line in (tmp_path / "d" / "train" / "scenes.jsonl").read_text().splitlines()]
    chats = shard_samples(tmp_path / "d" / "train" / "chat")
    for scene in scenes:
        parts = -(-len(scene["questions"]) // 2)  # ceil
        keys = [scene["key"]] if parts == 1 else [f"{scene['key']}_{i}" for i in range(parts)]
        asked = [qa for key in keys for qa in json.loads(chats[key]["json"])["questions"]]
        assert asked == scene["questions"]
    assert len(chats) == sum(-(-len(scene["questions"]) // 2) for scene in scenes)


def test_cli_rare_colour_is_recorded_and_a_bad_one_exits_2_with_one_line(tmp_path, capsys):
    from mmllm.cli.main import main

    assert main(["data", "shapes", "--train", "3", "--val", "1", "--test", "1", "--workers", "1",
                 "--rare-colour", "purple:0.2", "--out", str(tmp_path / "skewed")]) == 0
    assert json.loads((tmp_path / "skewed" / "shapes.json").read_text())["rare_colour"] == ["purple", 0.2]
    capsys.readouterr()
    for bad in ("pink:0.1", "purple:2", "purple"):
        with pytest.raises(SystemExit) as exit_:
            main(["data", "shapes", "--rare-colour", bad, "--out", str(tmp_path / "bad")])
        assert exit_.value.code == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert "COLOUR:FRACTION" in errors[-1]
