"""The memorisation audit: canaries written where the manifest says, exposure against hand-computed ranks, and an
untrained model at chance; `mmllm data canaries` and `mmllm audit memorization` end to end."""

from __future__ import annotations

import json
import math

import pytest

from data_pipelines.privacy.canaries import CanaryManifest, insert_canaries
from data_pipelines.read.shards import read_samples
from mmllm.cli.main import main
from mmllm.evaluation import memorization as mem


def test_exposure_is_the_rank_among_candidates_in_bits():
    assert mem.exposure(-1.0, [-2.0, -0.5, -3.0]) == pytest.approx(math.log2(4) - math.log2(2))  # rank 2 of 4
    assert mem.exposure(0.0, [-1.0] * 255) == pytest.approx(8.0)  # first of 256: all that R = 255 can show
    assert mem.exposure(0.0, [0.0] * 3) == pytest.approx(2 - math.log2(2.5))  # ties count half against it


def test_canaries_go_into_the_chosen_samples_once_each(trained, tmp_path):
    source = trained.data / "train" / "captions"
    manifest = insert_canaries(source, "caption", tmp_path / "out", secrets_per_count=2, repeats=(1, 3),
                               report=None)
    assert [c.repeats for c in manifest.canaries] == [1, 1, 3, 3]
    original = {s.key: s.conversation[-1]["content"] for s in read_samples(source, "caption", decode=False)}
    copied = {s.key: s.conversation[-1]["content"] for s in read_samples(tmp_path / "out", "caption", decode=False)}
    assert copied.keys() == original.keys()
    carried = {key: c.secret for c in manifest.canaries for key in c.keys}
    assert len(carried) == 8  # 2 x 1 + 2 x 3 distinct samples
    for key, caption in copied.items():
        if key in carried:
            assert caption == f"{original[key]} the code is {carried[key]}"
        else:
            assert caption == original[key]
    assert CanaryManifest.load(tmp_path / "out").canaries == manifest.canaries


def test_canary_copies_are_duplicates_that_dedup_finds_and_scrubbing_removes_a_phone_format(trained, tmp_path,
                                                                                             capsys):
    pytest.importorskip("datasketch")
    source = trained.data / "train" / "captions"
    manifest = insert_canaries(source, "caption", tmp_path / "copied", secrets_per_count=2, repeats=(1, 3),
                               digits=4, sentence_format="my number is 2 0 2 5 5 5 {secret}", copies=True,
                               report=None)
    original = {s.key: s for s in read_samples(source, "caption", decode=False)}
    copied = {s.key: s for s in read_samples(tmp_path / "copied", "caption", decode=False)}
    assert len(copied) == len(original) + 2 * 2  # each 3x secret: one carrier and two copies
    for canary in manifest.canaries:
        first, *copies = canary.keys
        assert len(canary.keys) == canary.repeats and first in original
        assert copies == [f"{first}-copy{n}" for n in range(1, canary.repeats)]
        caption = copied[first].conversation[-1]["content"]
        assert caption == f"{original[first].conversation[-1]['content']} my number is 2 0 2 5 5 5 {canary.secret}"
        for key in copies:
            assert copied[key].conversation[-1]["content"] == caption
            assert copied[key].images == copied[first].images
    # dedup keeps one sample per cluster; --scrub-pii replaces the phone number each carrier holds
    dedup = ["data", "dedup", str(tmp_path / "copied"), "--kind", "caption", "--out", str(tmp_path / "dedup")]
    assert main(dedup) == 0
    assert f"{2 * 2} of {len(copied)} samples are duplicates" in capsys.readouterr().out
    assert {s.key for s in read_samples(tmp_path / "dedup", "caption", decode=False)} == original.keys()
    pytest.importorskip("presidio_analyzer")
    assert main([*dedup[:-1], str(tmp_path / "scrubbed"), "--scrub-pii", "--pii-region", "US"]) == 0
    assert "scrubbed: phone 4" in capsys.readouterr().out
    scrubbed = {s.key: s.conversation[-1]["content"] for s in read_samples(tmp_path / "scrubbed", "caption",
                                                                            decode=False)}
    for canary in manifest.canaries:
        assert scrubbed[canary.keys[0]].endswith("my number is <PHONE>")


def test_a_model_that_knows_a_secret_shows_full_exposure(trained, tmp_path, monkeypatch):
    manifest = insert_canaries(trained.data / "train" / "captions", "caption", tmp_path / "out",
                               secrets_per_count=1, repeats=(2,), report=None)
    secret = manifest.canaries[0].secret
    found = {s.key: s for s in read_samples(tmp_path / "out", "caption", decode=False)}

    def knows_it(vlm, samples, batch_size=32):  # the one true secret is likelier than every other
        return [0.0 if secret in s.conversation[-1]["content"] else -5.0 for s in samples]

    monkeypatch.setattr(mem, "sample_log_likelihoods", knows_it)
    result, *controls = mem.canary_exposures(None, manifest, found, candidates=31, controls=8)
    assert result.exposure == pytest.approx(5.0) and result.rank == pytest.approx(1.0)
    # the controls, never written, tie with every candidate: rank 1 + 31 / 2, about 1 bit
    assert len(controls) == 8 and {c.repeats for c in controls} == {0} and secret not in {c.secret for c in controls}
    assert all(c.exposure == pytest.approx(5 - math.log2(16.5)) for c in controls)
    rows = mem.exposure_by_repeats([result, *controls])
    assert rows[2]["above_control_p95"] == 1.0 and rows[0]["p95_bits"] == pytest.approx(5 - math.log2(16.5))
    assert rows[2]["ci95"] == [pytest.approx(5.0)] * 2


def test_exposure_rows_read_canaries_against_the_controls_distribution():
    def exposures(repeats, values):
        return [mem.CanaryExposure(str(i), repeats, v, 1.0) for i, v in enumerate(values)]

    controls = exposures(0, [0.5 * (i % 5) for i in range(40)])  # 0 .. 2 bits; the 95th percentile is 2
    rows = mem.exposure_by_repeats(controls + exposures(16, [8.0, 8.0, 1.0, 0.5]) + exposures(1, [1.0, 1.5, 0.5, 0.0]))
    assert rows[0]["p95_bits"] == pytest.approx(2.0) and rows[0]["canaries"] == 40
    assert rows[16]["above_control_p95"] == 0.5 and rows[1]["above_control_p95"] == 0.0
    low, high = rows[16]["ci95"]
    assert low < rows[16]["mean_bits"] < high and rows[1]["ci95"][1] < rows[16]["ci95"][1]
    assert mem.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)


def test_audit_of_a_barely_trained_model_is_at_chance(trained, tmp_path, capsys):
    out = tmp_path / "canaried"
    assert main(["data", "canaries", str(trained.data / "train" / "captions"), "--kind", "caption", "--out", str(out),
                 "--secrets", "4", "--repeats", "1,2"]) == 0
    report_file = tmp_path / "audit.json"
    assert main(["audit", "memorization", "--model", str(trained.model), "--train", str(out),
                 "--heldout", str(trained.data / "val" / "captions"), "--limit", "6", "--candidates", "31",
                 "--controls", "3", "--out", str(report_file)]) == 0
    printed = capsys.readouterr().out
    assert "verbatim train" in printed and "canary exposure in bits" in printed
    report = json.loads(report_file.read_text())
    assert report["verbatim"]["train"]["samples"] == 6 and report["verbatim"]["heldout"]["samples"] == 6
    each = report["canaries"]["each"]
    assert len(each) == 8 + 8 * 3 and sum(row["repeats"] == 0 for row in each) == 24
    for row in each:  # exposure is log2(R + 1) - log2(rank), R = 31
        assert row["exposure"] == pytest.approx(5 - math.log2(row["rank"]))
    by_repeats = report["canaries"]["by_repeats"]
    assert set(by_repeats) == {"0", "1", "2"} and by_repeats["0"]["canaries"] == 24
    # a barely trained model never learned the secrets: canaries and controls are alike, so few canaries (about 5%) rank
    # above the controls' 95th percentile; three of four would happen by chance about once in 2000 audits
    assert by_repeats["1"]["above_control_p95"] <= 0.5 and by_repeats["2"]["above_control_p95"] <= 0.5
    assert "control (unseen)" in printed


def test_audit_mistakes_exit_2_with_one_line(trained, tmp_path, capsys):
    assert main(["audit", "memorization", "--model", str(trained.model), "--train", str(trained.data / "train"
                 / "captions"), "--heldout", str(trained.data / "val" / "captions"), "--canaries",
                 str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["data", "canaries", str(trained.data / "train" / "captions"), "--kind", "caption", "--out",
                 str(tmp_path / "x"), "--secrets", "40", "--repeats", "16"]) == 2  # more carriers than samples
    assert "usable" in capsys.readouterr().err
