"""mmllm data dedup and data scan: exact and near duplicates by MinHash and perceptual hash, the deduplicated
shards, and a scan report that counts personal data, faces and duplicates without rewriting anything."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from data_pipelines.read.shards import read_samples
from data_pipelines.convert.writers import ShardWriter
from mmllm.cli.main import main

pytest.importorskip("datasketch")
pytest.importorskip("imagehash")

CAPTION = "a small red circle sits above a large blue square on a grey table near the window"


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8))


def jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture
def shards(tmp_path):
    """6 caption samples: 0 and 1 identical, 2 a re-encoded near copy of 0 with one word changed, 3 the caption of 0
    on another picture, 4 and 5 unrelated."""
    with ShardWriter(tmp_path / "in", maxcount=4, report=None) as writer:
        writer.write_caption(jpeg(picture(0), 95), CAPTION, key="a")
        writer.write_caption(jpeg(picture(0), 95), CAPTION, key="b")
        writer.write_caption(jpeg(picture(0).resize((60, 60)).resize((64, 64)), 70),
                             CAPTION.replace("window", "windows"), key="c")
        writer.write_caption(jpeg(picture(1), 95), CAPTION, key="d")
        writer.write_caption(jpeg(picture(2), 95), "a green triangle", key="e")
        writer.write_caption(jpeg(picture(3), 95), "two yellow stars", key="f")
    return tmp_path


def test_clusters_need_image_and_text_by_default_and_either_alone_when_asked(shards):
    from data_pipelines.privacy.dedup import find_duplicates

    def clusters(by):
        report = find_duplicates(read_samples(shards / "in", "caption", decode=False), by=by)
        return [sorted(key.rsplit(":", 1)[1] for key in cluster) for cluster in report.clusters]

    assert clusters("both") == [["a", "b", "c"]]
    assert clusters("text") == [["a", "b", "c", "d"]]
    assert clusters("image") == [["a", "b", "c"]]


def test_dedup_writes_the_shards_without_duplicates_and_reports_them(shards, capsys):
    assert main(["data", "dedup", str(shards / "in"), "--kind", "caption", "--out", str(shards / "out"),
                 "--report", str(shards / "dedup.json")]) == 0
    assert "2 of 6 samples are duplicates, in 1 clusters" in capsys.readouterr().out
    assert [s.key for s in read_samples(shards / "out", "caption", decode=False)] == ["a", "d", "e", "f"]
    report = json.loads((shards / "dedup.json").read_text())
    assert report["duplicates"] == 2 and report["largest_cluster"] == 3


def test_scan_counts_personal_data_faces_and_duplicates_without_rewriting(shards, capsys):
    pytest.importorskip("presidio_analyzer")
    pytest.importorskip("cv2")
    import matplotlib.cbook as cbook

    portrait = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    with ShardWriter(shards / "scan", report=None) as writer:
        writer.write_caption(jpeg(portrait, 90), "our lead engineer, reach her at grace@example.com", key="p")
        writer.write_caption(jpeg(picture(5), 95), CAPTION, key="q")
        writer.write_caption(jpeg(picture(5), 95), CAPTION, key="r")
    before = sorted((shards / "scan").iterdir())
    assert main(["data", "scan", str(shards / "scan"), "--kind", "caption", "--out", str(shards / "scan.json")]) == 0
    printed = capsys.readouterr().out
    assert "samples with faces" in printed and "email" in printed
    report = json.loads((shards / "scan.json").read_text())
    assert report["pii"]["by_kind"] == {"email": 1} and report["faces"]["samples"] == 1
    assert report["duplicates"]["duplicates"] == 1
    assert sorted(p for p in (shards / "scan").iterdir() if p.suffix != ".json") == [
        p for p in before if p.suffix != ".json"]
