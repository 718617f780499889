"""--blur-faces on pictures that really hold a face (matplotlib's sample photograph of Grace Hopper) and on
pictures that hold none (matplotlib's logo, a shapes scene)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_pipelines.read.shards import read_samples
from mmllm.cli.main import main

pytest.importorskip("cv2")
cbook = pytest.importorskip("matplotlib.cbook")


def sample_picture(name: str) -> Image.Image:
    return Image.open(cbook.get_sample_data(name, asfileobj=False)).convert("RGB")


@pytest.fixture(scope="module")
def blurrer():
    from data_pipelines.privacy.faces import FaceBlurrer

    try:
        return FaceBlurrer()
    except ImportError as error:  # an OpenCV build without its cascades
        pytest.skip(str(error))


def test_a_portrait_has_its_face_blurred_and_nothing_else(blurrer):
    portrait = sample_picture("grace_hopper.jpg")  # 512 x 600, the face in the upper middle
    (left, top, right, bottom), = blurrer.faces(portrait)
    assert 100 < (left + right) / 2 < 420 and 80 < (top + bottom) / 2 < 360 and right - left > 100
    blurred, count = blurrer.blur(portrait)
    assert count == 1
    before, after = np.asarray(portrait).astype(int), np.asarray(blurred).astype(int)
    face = (slice(top, bottom), slice(left, right))
    assert np.abs(before[face] - after[face]).mean() > 5  # the face is changed ...
    assert np.array_equal(before[-40:], after[-40:])  # ... the bottom of the picture is not
    assert blurrer.faces(blurred) == []  # and no detector finds a face there any more


def test_pictures_without_faces_come_back_untouched(blurrer):
    from data_pipelines.convert.shapes import render, sample_scene, scene_rng

    scene = render(sample_scene(scene_rng(0, "train", 0), "train"), 256)
    for picture in (sample_picture("logo2.png"), scene):
        out, count = blurrer.blur(picture)
        assert count == 0 and out is picture


def test_from_folder_blurs_and_counts_the_images_it_changed(tmp_path, capsys):
    sample_picture("grace_hopper.jpg").save(tmp_path / "hopper.jpg", quality=95)
    sample_picture("logo2.png").save(tmp_path / "logo.png")
    (tmp_path / "captions.jsonl").write_text('{"file": "hopper.jpg", "caption": "a portrait"}\n'
                                             '{"file": "logo.png", "caption": "a logo"}\n')
    assert main(["data", "from-folder", str(tmp_path), "--captions", str(tmp_path / "captions.jsonl"), "--out",
                 str(tmp_path / "shards"), "--blur-faces"]) == 0
    assert "faces blurred: 1 in 1 images" in capsys.readouterr().out
    portrait, logo = read_samples(tmp_path / "shards", "caption")
    assert not np.array_equal(np.asarray(portrait.images[0]), np.asarray(Image.open(tmp_path / "hopper.jpg")))
    assert np.array_equal(np.asarray(logo.images[0]), np.asarray(sample_picture("logo2.png")))
