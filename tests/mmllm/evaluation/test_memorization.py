"""The memorisation audit: canaries written where the manifest says, exposure against hand-computed ranks, fake
scorers that memorised every canary or none read as such against the controls, and a barely trained model at
chance; `mmllm data canaries` and `mmllm audit memorization` end to end."""

from __future__ import annotations

import json
import math
import random
import zlib

import pytest

from data_pipelines.privacy.canaries import DEFAULT_FORMAT, Canary, CanaryManifest, insert_canaries
from data_pipelines.read.shards import Sample, read_samples
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
    assert rows[2]["p_control_at_least_as_exposed"] == 0.0 and rows[0]["p95_bits"] == pytest.approx(5 - math.log2(16.5))
    assert rows[2]["ci95"] == [pytest.approx(5.0)] * 2


def test_exposure_rows_count_the_controls_ranked_at_or_above_each_canary_ties_included():
    def ranked(repeats, ranks, candidates=255):
        return [mem.CanaryExposure(str(i), repeats, math.log2(candidates + 1) - math.log2(r), r)
                for i, r in enumerate(ranks)]

    controls = ranked(0, [1.0, 1.0, 3.0, 10.0, 50.0, 50.0, 100.0, 200.0])  # two rank first by chance
    rows = mem.exposure_by_repeats(controls + ranked(16, [1.0, 1.0, 60.0, 300.0]) + ranked(1, [50.0]))
    # by hand: rank 1 is tied by 2 of 8 controls, rank 60 beaten or tied by 6, rank 256 by all 8; rank 50 by 6
    assert rows[16]["p_control_at_least_as_exposed"] == pytest.approx((2 + 2 + 6 + 8) / 8 / 4)
    assert rows[1]["p_control_at_least_as_exposed"] == pytest.approx(6 / 8)
    low, high = rows[16]["p_control_at_least_as_exposed_ci95"]
    assert low < (2 + 2 + 6 + 8) / 32 < high and rows[1]["p_control_at_least_as_exposed_ci95"] == [0.75, 0.75]
    assert rows[0]["canaries"] == 8 and "p_control_at_least_as_exposed" not in rows[0]
    low, high = rows[16]["ci95"]
    assert low < rows[16]["mean_bits"] < high
    assert mem.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)


def fake_audit(digits: int = 6, per_count: int = 16, repeats=(1, 16)):
    """A manifest of text canaries and the samples that carry them, without shards or a model."""
    numbers = iter(random.Random(1).sample(range(10 ** digits), per_count * len(repeats)))  # distinct, as written
    canaries = [Canary(" ".join(f"{next(numbers):0{digits}d}"), count, [f"doc{count}-{i}"])
                for count in repeats for i in range(per_count)]
    manifest = CanaryManifest(kind="text", format=DEFAULT_FORMAT, digits=digits, canaries=canaries)
    found = {c.keys[0]: Sample(c.keys[0], "text", text=f"document {c.keys[0]} ends. {manifest.sentence(c.secret)}")
             for c in canaries}
    return manifest, found


def secret_in(sample: Sample) -> str:
    return sample.text.rsplit(DEFAULT_FORMAT.format(secret=""), 1)[1]


def hashed_score(sample: Sample) -> float:
    """A model with arbitrary but fixed preferences: some secrets in some contexts are likelier (never a tie)."""
    return -1.0 - zlib.crc32(sample.text.encode()) / 2 ** 32


def audit_with(scorer, monkeypatch, candidates: int, controls: int = 4, **fake):
    """What `mmllm audit memorization` computes for the canaries, with `scorer` standing in for the model's
    log-likelihood of each sample."""
    manifest, found = fake_audit(**fake)
    monkeypatch.setattr(mem, "sample_log_likelihoods", lambda vlm, samples, batch_size=32: [scorer(s) for s in samples])
    return mem.exposure_by_repeats(mem.canary_exposures(None, manifest, found, candidates=candidates,
                                                        controls=controls))


def test_a_model_that_memorised_every_canary_reads_as_memorised_when_controls_reach_the_cap(monkeypatch):
    manifest, _ = fake_audit()
    real = {c.secret for c in manifest.canaries}

    def memorised(sample):  # every real secret is the likeliest of its candidates: rank 1, the cap of 3 bits
        return 0.0 if secret_in(sample) in real else hashed_score(sample)

    rows = audit_with(memorised, monkeypatch, candidates=7)
    # about 1 control in 8 ranks first by chance, so the controls' 95th percentile is the cap itself: no canary is
    # above it, and a strict "above the controls' p95" read 0% for a model that knows every secret
    assert rows[0]["p95_bits"] == pytest.approx(3.0) and rows[0]["canaries"] == 2 * 16 * 4
    for count in (1, 16):
        assert rows[count]["mean_bits"] == pytest.approx(3.0)
        # only the controls that tie at rank 1 count against the canaries
        assert rows[count]["p_control_at_least_as_exposed"] < 0.2
        assert rows[count]["p_control_at_least_as_exposed_ci95"][1] < 0.5 and rows[count]["reads_as_memorised"]


def test_a_model_that_saw_no_canary_reads_as_not_memorised(monkeypatch):
    rows = audit_with(hashed_score, monkeypatch, candidates=7)  # canaries and controls alike to it
    for count in (1, 16):
        # ranks 1..8, a tie with the canary's rank 1 in 8: about 0.5 + 1/16; the mean of 16 canaries, sd ~0.07
        assert 0.35 < rows[count]["p_control_at_least_as_exposed"] < 0.8
        assert rows[count]["p_control_at_least_as_exposed_ci95"][1] >= 0.5 and not rows[count]["reads_as_memorised"]
    rows = audit_with(lambda sample: -1.0, monkeypatch, candidates=7)  # every secret alike: all ranks tie
    for count in (1, 16):
        assert rows[count]["p_control_at_least_as_exposed"] == 1.0 and not rows[count]["reads_as_memorised"]


def test_no_candidate_is_a_real_canary_secret(monkeypatch):
    manifest, found = fake_audit(digits=2, per_count=10)  # 20 of the 100 two-digit secrets are real
    real = {c.secret for c in manifest.canaries}
    rankings = []  # each call scores one secret (first) and its candidates

    def recording(vlm, samples, batch_size=32):
        rankings.append([secret_in(s) for s in samples])
        return [hashed_score(s) for s in samples]

    monkeypatch.setattr(mem, "sample_log_likelihoods", recording)
    results = mem.canary_exposures(None, manifest, found, candidates=40, controls=2)
    assert len(rankings) == len(results) == 20 * 3
    for ranked, *others in rankings:  # a real secret among them would outrank a control in its carrier's context
        assert len(set(others)) == 40 and ranked not in others and not real & set(others)
    with pytest.raises(ValueError, match="secrets of 2 digits"):
        mem.canary_exposures(None, manifest, found, candidates=80, controls=2)  # 80 + 20 real: none left to draw


def test_audit_of_a_barely_trained_model_is_at_chance(trained, tmp_path, capsys):
    out = tmp_path / "canaried"
    assert main(["data", "canaries", str(trained.data / "train" / "captions"), "--kind", "caption", "--out", str(out),
                 "--secrets", "8", "--repeats", "1,2"]) == 0
    report_file = tmp_path / "audit.json"
    assert main(["audit", "memorization", "--model", str(trained.model), "--train", str(out),
                 "--heldout", str(trained.data / "val" / "captions"), "--limit", "6", "--candidates", "31",
                 "--controls", "4", "--out", str(report_file)]) == 0
    printed = capsys.readouterr().out
    assert "verbatim train" in printed and "canary exposure in bits" in printed and "control (unseen)" in printed
    report = json.loads(report_file.read_text())
    assert report["verbatim"]["train"]["samples"] == 6 and report["verbatim"]["heldout"]["samples"] == 6
    each = report["canaries"]["each"]
    assert len(each) == 16 + 16 * 4 and sum(row["repeats"] == 0 for row in each) == 64
    for row in each:  # exposure is log2(R + 1) - log2(rank), R = 31
        assert row["exposure"] == pytest.approx(5 - math.log2(row["rank"]))
    by_repeats = report["canaries"]["by_repeats"]
    assert set(by_repeats) == {"0", "1", "2"} and by_repeats["0"]["canaries"] == 64
    # A barely trained model never learned the secrets, so its canaries are drawn from the controls' distribution
    # and each one's share of controls ranked at or above it is about uniform. Bounds that chance breaks in about
    # 2% of seeds, and that 3 of a count's 8 canaries ranked first (a bug, or a model that learnt them) break:
    control_ranks = [row["rank"] for row in each if row["repeats"] == 0]
    for count in ("1", "2"):
        shares = [sum(c <= row["rank"] for c in control_ranks) / 64 for row in each if str(row["repeats"]) == count]
        assert by_repeats[count]["p_control_at_least_as_exposed"] == pytest.approx(sum(shares) / 8)
        # the mean of 8 uniform shares is below 0.25 with probability 248 / 8! = 0.6%
        assert by_repeats[count]["p_control_at_least_as_exposed"] >= 0.25
        assert not by_repeats[count]["reads_as_memorised"]
        # a canary that at most 4 of 64 controls reach: 5 / 65 by chance, so 2 of 8 with probability 12%, 3 of 8 1.7%
        assert sum(share <= 4 / 64 for share in shares) <= 2


def test_audit_mistakes_exit_2_with_one_line(trained, tmp_path, capsys):
    assert main(["audit", "memorization", "--model", str(trained.model), "--train", str(trained.data / "train"
                 / "captions"), "--heldout", str(trained.data / "val" / "captions"), "--canaries",
                 str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["data", "canaries", str(trained.data / "train" / "captions"), "--kind", "caption", "--out",
                 str(tmp_path / "x"), "--secrets", "40", "--repeats", "16"]) == 2  # more carriers than samples
    assert "usable" in capsys.readouterr().err
