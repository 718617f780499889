"""Results by group (mmllm.evaluation.groups): the intervals and the gap test against hand computations, and
the grouping of questions by a field of their record or their sample's JSON."""

from __future__ import annotations

import math
import random

import pytest

from mmllm.evaluation.groups import bootstrap_interval, group_of, group_report, two_sided_p, wilson_interval


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


def test_the_z_test_p_value_equals_the_hand_computed_one():
    a, b = [1.0] * 60 + [0.0] * 40, [1.0] * 40 + [0.0] * 60
    se = math.sqrt(2 * (0.24 * 100 / 99) / 100)  # sample variances 0.6 * 0.4 * n / (n - 1)
    assert two_sided_p(a, b) == pytest.approx(math.erfc(0.2 / se / math.sqrt(2)))
    assert two_sided_p(a, b) == pytest.approx(0.00408, abs=1e-4)
    assert two_sided_p([1.0, 1.0], [1.0, 1.0]) == 1.0


def test_bootstrap_interval_holds_the_mean_is_seeded_and_narrows_with_more_questions():
    values = [1.0, 2 / 3, 1 / 3, 0.0] * 10
    low, high = bootstrap_interval(values)
    assert low < sum(values) / len(values) < high
    assert bootstrap_interval(values) == (low, high)
    wide, narrow = bootstrap_interval(values[:8]), bootstrap_interval(values * 10)
    assert narrow[1] - narrow[0] < high - low < wide[1] - wide[0]


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
