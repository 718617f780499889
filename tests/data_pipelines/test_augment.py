"""data.augment: torchvision v2 crops, flips and jitter on training images only, each opt-in."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from shard_fixtures import tiny_processor

from data_pipelines.augment import Augmentation

pytest.importorskip("torchvision")


def scene() -> Image.Image:
    """32 x 24 black image with a red block on the left."""
    pixels = np.zeros((24, 32, 3), dtype=np.uint8)
    pixels[8:16, 2:10] = (220, 30, 30)
    return Image.fromarray(pixels)


def test_nothing_is_on_unless_asked_and_bad_values_are_refused():
    assert not Augmentation().active and Augmentation(flip=True).active
    with pytest.raises(ValueError, match="crop_scale"):
        Augmentation(crop_scale=1.5)
    with pytest.raises(ValueError, match="color_jitter"):
        Augmentation(color_jitter=1.0)


def test_flip_mirrors_about_half_the_images_and_keeps_the_pixels():
    torch.manual_seed(0)
    image = np.asarray(scene())
    outs = [np.asarray(Augmentation(flip=True)(scene())) for _ in range(40)]
    flipped = [out for out in outs if not np.array_equal(out, image)]
    assert 5 < len(flipped) < 35
    assert all(np.array_equal(out, image[:, ::-1]) for out in flipped)


def test_crop_keeps_the_image_size_and_jitter_keeps_the_geometry():
    torch.manual_seed(0)
    cropped = Augmentation(crop_scale=0.5)(scene())
    assert cropped.size == (32, 24) and not np.array_equal(np.asarray(cropped), np.asarray(scene()))
    jittered = np.asarray(Augmentation(color_jitter=0.5)(scene())).astype(int)
    original = np.asarray(scene()).astype(int)
    assert not np.array_equal(jittered, original)
    # black stays black under brightness/contrast/saturation up to contrast's grey shift; the block stays put
    block = np.zeros((24, 32), bool)
    block[8:16, 2:10] = True
    assert jittered[block].mean() > jittered[~block].mean() + 50


def test_a_processor_augments_only_when_given_and_pickles_for_workers():
    processor = tiny_processor()
    plain = processor.pixel_values([scene()])
    processor.augment = pickle.loads(pickle.dumps(Augmentation(flip=True)))  # as a loader worker gets it
    torch.manual_seed(0)
    seen = [processor.pixel_values([scene()]) for _ in range(20)]
    assert any(torch.equal(s, plain) for s in seen) and any(torch.equal(s, plain.flip(-1)) for s in seen)
