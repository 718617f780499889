"""`mmllm data shapes --spurious SHAPE:COLOUR:FRACTION`: the planted bias is in the train split only, every split
names its groups, and a spec that does not parse is said in one line with status 2."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from data_pipelines.convert.shapes import make_example

SPURIOUS = ("circle", "red", 0.95)


def circle_colours(split: str, spurious=SPURIOUS) -> Counter:
    return Counter(o["colour"] for i in range(300) for o in make_example(3, split, i, 16, spurious=spurious)["objects"]
                   if o["shape"] == "circle")


def test_train_circles_take_the_planted_colour_and_val_stays_balanced():
    train, val = circle_colours("train"), circle_colours("val")
    assert train["red"] / sum(train.values()) > 0.9 and len(train) > 1  # 95%, and the others still occur
    assert val["red"] / sum(val.values()) < 0.35  # one of five circle colours
    # the other splits' scenes are the unbiased ones, with their groups named
    example, plain = make_example(3, "val", 7, 16, spurious=SPURIOUS), make_example(3, "val", 7, 16)
    assert example["objects"] == plain["objects"] and example["png"] == plain["png"]
    for qa in example["questions"]:
        if qa.get("shape") == "circle" and "colour" in qa:
            assert qa["spurious"] == ("red circle" if qa["colour"] == "red" else "other circle")
        else:
            assert "spurious" not in qa


def test_cli_spurious_is_recorded_and_a_bad_spec_exits_2_with_one_line(tmp_path, capsys):
    from mmllm.cli.main import main

    out = tmp_path / "biased"
    assert main(["data", "shapes", "--train", "6", "--val", "2", "--test", "1", "--workers", "1",
                 "--spurious", "circle:red:0.95", "--out", str(out)]) == 0
    assert json.loads((out / "shapes.json").read_text())["spurious"] == ["circle", "red", 0.95]
    scenes = [json.loads(line) for line in (out / "train/scenes.jsonl").read_text().splitlines()]
    assert scenes
    capsys.readouterr()
    for bad in ("circle:red", "circle:pink:0.9", "blob:red:0.9", "circle:red:1.5", "circle:yellow:0.9"):
        with pytest.raises(SystemExit) as exit_:
            main(["data", "shapes", "--spurious", bad, "--out", str(tmp_path / "bad")])
        assert exit_.value.code == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and "--spurious" in errors[0], errors
