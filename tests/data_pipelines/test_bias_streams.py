"""data.balance and data.counterfactual in the stream: resampling reaches equal group frequencies, a sample's group is
read from its JSON, and counterfactual samples' images are their rewritten scenes redrawn."""

from __future__ import annotations

import io
import random
from collections import Counter

import pytest
from PIL import Image, ImageChops

from data_pipelines.balance import (
    GROUP_KEY,
    NO_GROUP,
    Balance,
    inverse_frequency_weights,
    label_groups,
    resample_groups,
    sample_group,
)
from data_pipelines.convert.shapes import HELD_OUT_PAIRS, answer_from_objects, caption, generate_shapes, render, scene_from_records
from data_pipelines.counterfactual import Counterfactual, counterfactual_sample, counterfactual_samples
from data_pipelines.read.loader import MixtureDataset
from data_pipelines.read.shards import Sample, read_samples


@pytest.fixture(scope="module")
def biased_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("biased")
    generate_shapes(root, train=240, val=4, test=2, image_size=32, maxcount=80, spurious=("circle", "red", 0.95),
                    report=lambda *_: None)
    return root


def samples_of(groups: list[str | None]) -> list[Sample]:
    return [Sample(key=str(i), kind="chat", conversation=[], meta={} if g is None else {"group": g})
            for i, g in enumerate(groups)]


def test_resampling_reaches_equal_group_frequencies_within_a_bound():
    rng = random.Random(0)
    groups = rng.choices(["common", "rare", "rarest", None], [0.6, 0.08, 0.02, 0.3], k=6000)
    out = [s.meta[GROUP_KEY] for s in resample_groups(label_groups(samples_of(groups), "group"), rng)]
    assert len(out) == len(groups)  # the stream keeps its length
    shares = Counter(out[1000:])  # once every group has been seen
    assert set(shares) == {"common", "rare", "rarest", NO_GROUP}
    for group, n in shares.items():
        assert abs(n / 5000 - 1 / 4) < 0.03, shares


def test_the_training_stream_resamples_the_planted_groups_to_equal_shares(biased_shapes):
    counts_before = Counter(sample_group(s, "group") or NO_GROUP
                            for s in read_samples(biased_shapes / "train/chat", "chat", decode=False))
    assert counts_before["other circle"] < counts_before["red circle"] / 5  # the bias is there to undo
    stream = MixtureDataset([{"kind": "chat", "path": str(biased_shapes / "train/chat")}], None, shuffle_buffer=50,
                            balance=Balance("group"))
    delivered = Counter(s.meta[GROUP_KEY] for s in stream)  # one epoch: 240 samples
    assert set(delivered) == {"red circle", "other circle", NO_GROUP}
    for n in delivered.values():
        assert abs(n / 240 - 1 / 3) < 0.1, delivered


def test_a_group_is_a_json_key_an_answer_or_a_field_of_the_questions():
    chat = Sample(key="k", kind="chat", conversation=[{"role": "user", "content": "Q?"},
                                                      {"role": "assistant", "content": "red"}],
                  meta={"url": "x", "group": "a", "questions": [{"colour": "red"}, {"colour": "blue"}, {"type": "t"}]})
    assert sample_group(chat, "group") == "a"
    assert sample_group(chat, "answer") == "red"
    assert sample_group(chat, "colour") == "blue+red"
    assert sample_group(chat, "url") is None and sample_group(chat, "shape") is None  # the reader's own keys are not
    weights = inverse_frequency_weights(Counter({"a": 90, "b": 10}))
    assert weights["b"] / weights["a"] == pytest.approx(9) and 0.9 * weights["a"] + 0.1 * weights["b"] == 1
    with pytest.raises(ValueError, match="resample or reweight"):
        Balance("group", "oversample")


def test_counterfactual_images_match_their_rewritten_scenes(biased_shapes):
    rng = random.Random(0)
    swaps = {"red": ("blue", "green")}
    checked = 0
    for kind, folder in (("chat", "chat"), ("caption", "captions")):
        for sample in read_samples(biased_shapes / "train" / folder, kind, decode=False):
            if not any(o["colour"] == "red" for o in sample.meta["objects"]):
                continue
            new = counterfactual_sample(sample, swaps, rng)
            objects = new.meta["objects"]
            alternative = new.meta["counterfactual"].split("->")[1]
            for obj in objects:  # every red object changed, unless its new pair is one the compositional test holds out
                assert obj["colour"] != "red" or (alternative, obj["shape"]) in HELD_OUT_PAIRS
            assert [o["shape"] for o in objects] == [o["shape"] for o in sample.meta["objects"]]
            image = Image.open(io.BytesIO(new.images[0])).convert("RGB")
            background = Image.open(io.BytesIO(sample.images[0])).convert("RGB").getpixel((0, 0))
            drawn = render(scene_from_records(objects, background), image.width)
            assert ImageChops.difference(image, drawn).getbbox() is None  # pixel for pixel the rewritten scene
            turns = new.conversation
            if kind == "caption":
                assert turns[-1]["content"] == caption(scene_from_records(objects, background))
            for question, answer in zip(turns[0::2], turns[1::2]) if kind == "chat" else ():
                text = question["content"].replace("<image>", "").strip()
                assert answer["content"] == answer_from_objects(objects, text)  # every answer true of the new scene
            checked += 1
            if checked % 20 == 0:
                break
    assert checked >= 40


def test_text_only_samples_are_swapped_and_other_pictures_are_left_alone():
    rng = random.Random(0)
    text = Sample(key="t", kind="text", text="A red ball and a red box.")
    assert counterfactual_sample(text, {"red": ("orange",)}, rng).text == "An orange ball and an orange box."
    photo = Sample(key="p", kind="chat", conversation=[{"role": "user", "content": "<image>\nIs it red?"},
                                                       {"role": "assistant", "content": "yes"}], images=[b"jpeg"])
    assert counterfactual_sample(photo, {"red": ("blue",)}, rng) is photo  # no scene to redraw: no swap
    options = Counterfactual("red=blue", prob=0.0)
    assert list(counterfactual_samples([text], options, rng)) == [text]
    with pytest.raises(ValueError, match="WORD=ALTERNATIVE"):
        Counterfactual("red")
