"""Results by group, with uncertainty: `mmllm eval --group-by FIELD`.

Each group's accuracy gets a 95% interval: Wilson's score interval when every per-question score is 0 or 1 (a
binomial proportion; it stays inside [0, 1] and keeps its coverage for small groups and accuracies near 0 or 1,
where the normal interval does not), else a percentile bootstrap over the group's questions (VQA scores of 1/3
and 2/3 with ten references). The largest gap between two groups is tested with a two-sided z-test on the
difference of means, Bonferroni-corrected for the k(k-1)/2 pairs it was picked from, so "significant" means the
worst group is worse beyond the chance of picking the most extreme pair. The accuracies per group and the largest
gap are fairlearn's MetricFrame `by_group` and `difference()` (checked in tests/mmllm/evaluation/test_groups.py);
fairlearn is not needed to run this.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP_RESAMPLES = 2000


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion successes / n."""
    if n <= 0:
        raise ValueError("an interval needs at least one observation")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact at the ends (no rounding past them)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def bootstrap_interval(values: Sequence[float], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the mean over `resamples` resamples with replacement (seeded)."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


def interval(values: Sequence[float]) -> tuple[tuple[float, float], str]:
    """(95% interval of the mean, the method's name)."""
    if all(v in (0.0, 1.0) for v in values):
        return wilson_interval(sum(values), len(values)), "wilson"
    return bootstrap_interval(values), "bootstrap"


def two_sided_p(a: Sequence[float], b: Sequence[float]) -> float:
    """p-value of a z-test that the means of a and b differ (unequal variances)."""
    def mean_var(x):
        m = sum(x) / len(x)
        return m, sum((v - m) ** 2 for v in x) / max(1, len(x) - 1)

    (ma, va), (mb, vb) = mean_var(a), mean_var(b)
    se = math.sqrt(va / len(a) + vb / len(b))
    if se == 0:
        return 1.0 if ma == mb else 0.0
    return math.erfc(abs(ma - mb) / se / math.sqrt(2))


def group_report(field: str, groups: Sequence[str | None], scores: Sequence[float],
                 blind_scores: Sequence[float] | None = None) -> dict:
    """Per group (None = the field is absent; left out): count, accuracy, its 95% interval, the blind accuracy of
    the same questions; and the largest gap between two groups with its corrected p-value."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        if group is not None:
            members.setdefault(str(group), []).append(index)
    if not members:
        raise ValueError(f"no question has a value for {field!r}")
    rows = []
    for name, indices in sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        values = [scores[i] for i in indices]
        (low, high), method = interval(values)
        row = {"group": name, "count": len(values), "accuracy": sum(values) / len(values), "ci95": [low, high],
               "interval": method}
        if blind_scores is not None:
            row["blind_accuracy"] = sum(blind_scores[i] for i in indices) / len(indices)
        rows.append(row)
    report = {"field": field, "groups": rows, "questions_without_field": sum(g is None for g in groups)}
    if len(rows) > 1:
        best, worst = max(rows, key=lambda r: r["accuracy"]), min(rows, key=lambda r: r["accuracy"])
        pairs = len(rows) * (len(rows) - 1) // 2
        p = two_sided_p([scores[i] for i in members[best["group"]]], [scores[i] for i in members[worst["group"]]])
        corrected = min(1.0, p * pairs)
        report["largest_gap"] = {"best": best["group"], "worst": worst["group"],
                                 "gap": best["accuracy"] - worst["accuracy"], "p_value": corrected,
                                 "pairs": pairs, "significant": corrected < 0.05}
    return report


def group_of(record: dict, fields: dict, field: str) -> str | None:
    """The value a question has for `field`: a key of its report record, else of its sample's JSON (the
    question's own entry in `questions`, then the sample's top level); lists and objects are not groups.
    Fields joined by commas group by their values together ("question_type,answer" -> "colour/red")."""
    if "," in field:
        values = [group_of(record, fields, part.strip()) for part in field.split(",")]
        return None if None in values else "/".join(values)
    for source in (record, fields):
        if field in source:
            value = source[field]
            return None if value is None or isinstance(value, (list, dict)) else str(value)
    return None
