"""Results by group, with uncertainty: `mmllm eval --group-by FIELD`.

Each group's accuracy gets a 95% interval:
- Wilson's score interval when every per-question score is 0 or 1 and no image holds two of the group's
  questions (a binomial proportion; it stays inside [0, 1] and keeps its coverage for small groups and
  accuracies near 0 or 1, where the normal interval does not);
- else a percentile bootstrap that resamples images, not questions: the questions of one image share its pixels
  and are not independent, so each image's questions are drawn together (a cluster bootstrap; with one question
  per image it is the ordinary bootstrap). VQA scores of 1/3 and 2/3 (ten references) take this path too.

The largest gap between two groups is tested two-sided, Bonferroni-corrected for the k(k-1)/2 pairs it was
picked from, so "significant" means the worst group is worse beyond the chance of picking the most extreme pair:
Fisher's exact test on the 2x2 table of right and wrong for 0/1 scores with one question per image, else the
cluster bootstrap of the difference. Groups with fewer than `min_group_size` questions are listed with their
accuracy and interval but take no part in the gap (a group of one is always 0% or 100%); the report names them.
Cross-checks (tests/mmllm/evaluation/test_groups.py): the accuracies and the largest gap against fairlearn's
MetricFrame, the Wilson interval and Fisher's p against scipy.stats. Neither library is needed to run this.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP_RESAMPLES = 2000
MIN_GROUP_SIZE = 10  # questions a group needs to take part in the largest-gap test


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


def fisher_exact_p(a_right: int, a_total: int, b_right: int, b_total: int) -> float:
    """Two-sided p-value of Fisher's exact test on [[a_right, a_wrong], [b_right, b_wrong]]: the probability,
    with both margins fixed, of a table no more likely than the observed one (as scipy.stats.fisher_exact)."""
    right, total = a_right + b_right, a_total + b_total
    ways = math.comb(total, right)

    def probability(k: int) -> float:  # k of the right answers in group a
        return math.comb(a_total, k) * math.comb(b_total, right - k) / ways

    observed = probability(a_right)
    tables = range(max(0, right - b_total), min(a_total, right) + 1)
    return min(1.0, sum(p for p in map(probability, tables) if p <= observed * (1 + 1e-7)))


def cluster_means(values: Sequence[float], clusters: Sequence[str], seed: int,
                  resamples: int = BOOTSTRAP_RESAMPLES) -> list[float]:
    """The mean over `resamples` resamples of whole clusters (an image's questions together), with replacement."""
    sums: dict[str, list[float]] = {}
    for value, cluster in zip(values, clusters):
        sums.setdefault(cluster, [0.0, 0])
        sums[cluster][0] += value
        sums[cluster][1] += 1
    totals = list(sums.values())
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        drawn = rng.choices(totals, k=len(totals))
        means.append(sum(t[0] for t in drawn) / sum(t[1] for t in drawn))
    return means


def bootstrap_gap_p(a: Sequence[float], a_clusters: Sequence[str], b: Sequence[float], b_clusters: Sequence[str],
                    seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> float:
    """Two-sided bootstrap p-value that the means of a and b differ: twice the share of resampled differences on
    the far side of zero (resampling clusters within each group), never below 1 / (resamples + 1)."""
    gaps = [x - y for x, y in zip(cluster_means(a, a_clusters, seed, resamples),
                                  cluster_means(b, b_clusters, seed + 1, resamples))]
    below = sum(g <= 0 for g in gaps)
    above = sum(g >= 0 for g in gaps)
    return min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def group_interval(values: Sequence[float], clusters: Sequence[str]) -> tuple[tuple[float, float], str]:
    """(95% interval of the group's mean, the method's name)."""
    if is_binary(values) and len(set(clusters)) == len(clusters):
        return wilson_interval(sum(values), len(values)), "wilson"
    means = sorted(cluster_means(values, clusters, seed=0))
    low, high = means[int(0.025 * len(means))], means[min(len(means) - 1, int(0.975 * len(means)))]
    return (low, high), "bootstrap by image" if len(set(clusters)) < len(clusters) else "bootstrap"


def group_report(field: str, groups: Sequence[str | None], scores: Sequence[float],
                 blind_scores: Sequence[float] | None = None, clusters: Sequence[str] | None = None,
                 min_group_size: int = MIN_GROUP_SIZE) -> dict:
    """Per group (None = the field is absent; left out): count, accuracy, its 95% interval, the blind accuracy of
    the same questions; and the largest gap between two groups of at least `min_group_size` questions, with its
    corrected p-value. clusters: the image (sample key) of each question; None: every question its own."""
    clusters = [str(i) for i in range(len(scores))] if clusters is None else [str(c) for c in clusters]
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        if group is not None:
            members.setdefault(str(group), []).append(index)
    if not members:
        raise ValueError(f"no question has a value for {field!r}")
    rows = []
    for name, indices in sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        values = [scores[i] for i in indices]
        (low, high), method = group_interval(values, [clusters[i] for i in indices])
        row = {"group": name, "count": len(values), "accuracy": sum(values) / len(values), "ci95": [low, high],
               "interval": method}
        if blind_scores is not None:
            row["blind_accuracy"] = sum(blind_scores[i] for i in indices) / len(indices)
        rows.append(row)
    tested = [row for row in rows if row["count"] >= min_group_size]
    report = {"field": field, "groups": rows, "questions_without_field": sum(g is None for g in groups),
              "min_group_size": min_group_size,
              "groups_below_min_size": [row["group"] for row in rows if row["count"] < min_group_size]}
    if len(tested) > 1:
        best, worst = max(tested, key=lambda r: r["accuracy"]), min(tested, key=lambda r: r["accuracy"])
        pairs = len(tested) * (len(tested) - 1) // 2
        a, b = members[best["group"]], members[worst["group"]]
        a_values, b_values = [scores[i] for i in a], [scores[i] for i in b]
        a_clusters, b_clusters = [clusters[i] for i in a], [clusters[i] for i in b]
        independent = len(set(a_clusters + b_clusters)) == len(a) + len(b)
        if is_binary(a_values + b_values) and independent:
            p, test = fisher_exact_p(int(sum(a_values)), len(a), int(sum(b_values)), len(b)), "fisher exact"
        else:
            p = bootstrap_gap_p(a_values, a_clusters, b_values, b_clusters)
            test = "bootstrap" if independent else "bootstrap by image"
        corrected = min(1.0, p * pairs)
        report["largest_gap"] = {"best": best["group"], "worst": worst["group"],
                                 "gap": best["accuracy"] - worst["accuracy"], "p_value": corrected, "test": test,
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
