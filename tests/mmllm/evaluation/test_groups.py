"""Results by group (mmllm.evaluation.groups): the intervals and the gap tests against hand computations and
reference implementations (scipy.stats, fairlearn), the minimum group size, the bootstrap by image, and the
grouping of questions by a field of their record or their sample's JSON."""

from __future__ import annotations

import math
import random

import pytest

from mmllm.evaluation.groups import (bootstrap_gap_p, cluster_means, fisher_exact_p, group_interval, group_of,
                                     group_report, wilson_interval)


def test_wilson_interval_equals_the_hand_computed_score_interval():
    # 8 of 10, z = 1.96: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.71677, half-width 0.22659
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-4) and high == pytest.approx(0.94331, abs=1e-4)
    # 0 of 10: the lower end is 0 and the upper z^2 / (n + z^2)
    z2 = 1.959963984540054 ** 2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_fisher_exact_p_equals_the_hand_computed_one_and_scipys():
    # [[3, 0], [0, 3]]: of the C(6, 3) = 20 tables with these margins, the two extreme ones have p = 1/20 each
    assert fisher_exact_p(3, 3, 0, 3) == pytest.approx(0.1)
    assert fisher_exact_p(1, 1, 0, 1) == pytest.approx(1.0)  # two groups of one prove nothing
    stats = pytest.importorskip("scipy.stats")
    for table in [(60, 100, 40, 100), (9, 12, 2, 10), (0, 15, 7, 15), (50, 50, 45, 50), (5, 7, 5, 30)]:
        a_right, a_total, b_right, b_total = table
        expected = stats.fisher_exact([[a_right, a_total - a_right], [b_right, b_total - b_right]]).pvalue
        assert fisher_exact_p(*table) == pytest.approx(expected, rel=1e-9), table


def test_wilson_interval_equals_scipys():
    stats = pytest.importorskip("scipy.stats")
    for right, n in [(8, 10), (0, 7), (31, 31), (120, 400)]:
        expected = stats.binomtest(right, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(right, n) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_bootstrap_by_image_draws_an_images_questions_together():
    # Ten images, each with four questions answered the same way (all right or all wrong): forty questions hold
    # only ten independent observations, so the interval by image is about twice as wide as by question.
    values = [1.0] * 24 + [0.0] * 16
    by_image = [str(i // 4) for i in range(40)]
    (low_i, high_i), method = group_interval(values, by_image)
    (low_q, high_q), method_q = group_interval(values, [str(i) for i in range(40)])
    assert (method, method_q) == ("bootstrap by image", "wilson")
    assert high_i - low_i > 1.6 * (high_q - low_q)
    resampled = cluster_means(values, by_image, seed=0, resamples=200)
    assert all(round(m * 10) == m * 10 for m in resampled)  # whole images only: tenths of the 40 questions


def test_the_bootstrap_gap_test_tells_a_real_gap_from_noise():
    a, b = [1.0, 2 / 3, 1 / 3, 1.0] * 15, [0.0, 1 / 3, 2 / 3, 0.0] * 15
    ids = [str(i) for i in range(60)]
    assert bootstrap_gap_p(a, ids, b, ids) < 0.01
    assert bootstrap_gap_p(a, ids, list(reversed(a)), ids) > 0.5
    # the same answers over four images (each image's question asked fifteen times) are four observations
    four = [str(i % 4) for i in range(60)]
    assert bootstrap_gap_p(a, four, b, four) > 5 * bootstrap_gap_p(a, ids, b, ids)


def test_groups_under_the_minimum_size_are_listed_and_left_out_of_the_gap():
    # Groups of one, all right against all wrong, made a z-test report p = 0: "significant" singletons.
    groups = ["yes"] * 40 + ["no"] * 40 + ["seven"] + ["blue"]
    scores = [1.0] * 30 + [0.0] * 10 + [1.0] * 28 + [0.0] * 12 + [1.0] + [0.0]
    report = group_report("answer", groups, scores)
    assert report["groups_below_min_size"] == ["blue", "seven"] and report["min_group_size"] == 10
    assert {row["group"] for row in report["groups"]} == {"yes", "no", "seven", "blue"}
    gap = report["largest_gap"]
    assert (gap["best"], gap["worst"], gap["pairs"], gap["test"]) == ("yes", "no", 1, "fisher exact")
    assert not gap["significant"]
    only_singletons = group_report("answer", ["a", "b"], [1.0, 0.0])
    assert "largest_gap" not in only_singletons and only_singletons["groups_below_min_size"] == ["a", "b"]
    assert group_report("answer", ["a", "b"], [1.0, 0.0], min_group_size=1)["largest_gap"]["p_value"] == 1.0


def test_group_report_finds_a_real_gap_and_not_a_chance_one():
    groups = ["red"] * 100 + ["blue"] * 100 + [None] * 7
    scores = [1.0] * 90 + [0.0] * 10 + [1.0] * 50 + [0.0] * 50 + [1.0] * 7
    blind = [0.5] * 207
    report = group_report("colour", groups, scores, blind)
    blue, red = report["groups"]  # largest first, then by name: both 100
    assert (blue["group"], red["group"]) == ("blue", "red")
    assert red["accuracy"] == 0.9 and red["ci95"] == pytest.approx(list(wilson_interval(90, 100)))
    assert red["blind_accuracy"] == 0.5 and report["questions_without_field"] == 7
    gap = report["largest_gap"]
    assert (gap["best"], gap["worst"], gap["significant"]) == ("red", "blue", True) and gap["gap"] == pytest.approx(0.4)
    assert gap["test"] == "fisher exact" and gap["p_value"] == pytest.approx(fisher_exact_p(90, 100, 50, 100))
    close = group_report("colour", ["a"] * 100 + ["b"] * 100 + ["c"] * 100,
                         [1.0] * 50 + [0.0] * 50 + [1.0] * 53 + [0.0] * 47 + [1.0] * 48 + [0.0] * 52)
    assert close["largest_gap"]["pairs"] == 3 and not close["largest_gap"]["significant"]
    with pytest.raises(ValueError, match="no question has a value"):
        group_report("colour", [None, None], [1.0, 0.0])


def test_a_question_is_grouped_by_its_record_first_then_its_samples_json():
    record = {"question_type": "count", "answer": "2"}
    fields = {"answer": "two", "colour": "red", "objects": [1, 2]}
    assert group_of(record, fields, "answer") == "2"
    assert group_of(record, fields, "colour") == "red"
    assert group_of(record, fields, "objects") is None and group_of(record, fields, "size") is None
    assert group_of(record, fields, "question_type, colour") == "count/red"
    assert group_of(record, fields, "question_type,size") is None


def test_group_accuracies_and_the_largest_gap_equal_fairlearns_metricframe():
    fairlearn = pytest.importorskip("fairlearn.metrics")
    import numpy as np

    rng = random.Random(3)
    groups = [rng.choice(["red", "green", "blue", "purple"]) for _ in range(400)]
    scores = [rng.choice([0.0, 1.0 / 3, 2.0 / 3, 1.0]) if g != "purple" else rng.choice([0.0, 1.0]) for g in groups]
    report = group_report("colour", groups, scores)
    frame = fairlearn.MetricFrame(metrics=lambda truth, score: float(np.mean(score)), y_true=np.ones(len(scores)),
                                  y_pred=np.array(scores), sensitive_features=np.array(groups))
    assert {row["group"]: row["accuracy"] for row in report["groups"]} == pytest.approx(frame.by_group.to_dict())
    assert report["largest_gap"]["gap"] == pytest.approx(frame.difference(method="between_groups"))
