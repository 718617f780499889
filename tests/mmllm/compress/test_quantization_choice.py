"""How `quantize(model, bits)` ("auto") chooses a method and when it trusts what it remembered: the rule's
outcomes on scripted timings (answer_seconds faked: no test here times anything), each expected outcome written
out rather than recomputed by the rule under test."""

from __future__ import annotations

import json

import pytest
import torch

import mmllm.compress.quantization as q
from mmllm.compress.packed import Int8Linear
from mmllm.compress.quantization import METHODS, QuantizationReport, machine_key, quantize


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLLM_CACHE_DIR", str(tmp_path / "cache"))
    # Handing freed pages back (gc.collect + malloc_trim) is for 100M-parameter models; on a tiny one, in a test
    # process whose heap holds the whole suite, each call takes ~0.4 s and decides nothing checked here.
    monkeypatch.setattr(q, "release_freed_memory", lambda: None)


def _model():
    from tiny_models import tiny_model

    return tiny_model(seed=1)


def _cache(tmp_path) -> dict:
    return json.loads((tmp_path / "cache" / "quantize-choices.json").read_text())


def scripted_timings(monkeypatch, answers: dict[str, list[float]]) -> list[str]:
    """answer_seconds replaced by each contender's next scripted time (contenders told apart by their layers;
    a warm-up answer is the contender's first time, not used up); returns the order the contenders were timed in.
    The int8 methods are narrowed to torch-dynamic-int8 and torch-packed-int8 (no torchao needed)."""
    order = []

    def answer_seconds(model, repeats=2, warm_up=True, **_):
        modules = {type(m).__module__ for m in model.modules()}
        name = ("torch-packed-int8" if "mmllm.compress.packed" in modules
                else "torch-dynamic-int8" if any("quantized" in m for m in modules) else "float32")
        if warm_up is False:
            order.append(name)
            return answers[name].pop(0)
        return answers[name][0]

    monkeypatch.setattr(q, "answer_seconds", answer_seconds)
    monkeypatch.setattr(q, "methods_for", lambda bits: [METHODS["torch-dynamic-int8"], METHODS["torch-packed-int8"]])
    return order


def test_auto_quantizes_to_the_asked_precision_even_when_float32_answers_fastest(monkeypatch):
    scripted_timings(monkeypatch, {"float32": [0.5] * 3, "torch-dynamic-int8": [1.0] * 3,
                                   "torch-packed-int8": [0.9] * 3})
    model = _model()
    report = quantize(model, 8)
    assert report.method == "torch-packed-int8" and report.layers > 0
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    assert report.summary().startswith(f"quantized {report.layers} linear layers to int8 with torch-packed-int8;")
    assert ("; 900 ms per answer, 0.56x float32's 500 ms (no int8 method beats float32 here: it saves memory, "
            "not time) (measured now: float32 500 ms, torch-packed-int8 900 ms, torch-dynamic-int8 1000 ms)"
            in report.summary())


def test_auto_times_the_methods_in_turn_until_the_fastest_stands_apart(monkeypatch):
    order = scripted_timings(monkeypatch, {"float32": [1.0, 1.1, 0.9, 1.0, 1.2, 1.0, 1.0],
                                           "torch-dynamic-int8": [0.5, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5],
                                           "torch-packed-int8": [0.7, 0.7, 0.7, 0.7, 0.6, 0.7, 0.7]})
    report = quantize(_model(), 8)
    # rounds 1-3 overlap (0.95 > 0.7); no later round separates them either (the 0.95 stays): all 7 run
    assert order[:3] == ["float32", "torch-dynamic-int8", "torch-packed-int8"] and len(order) == 3 * 7
    assert report.method == "torch-dynamic-int8" and report.seconds["torch-dynamic-int8"] == 0.5
    assert report.spread["float32"] == pytest.approx(0.3)


def test_methods_far_slower_than_float32_are_still_chosen_from(monkeypatch):
    # both methods' first answers are over 5x float32's; only packed is over 5x the fastest method's
    scripted_timings(monkeypatch, {"float32": [0.1] * 3, "torch-dynamic-int8": [1.0] * 3,
                                   "torch-packed-int8": [6.0] * 3})
    report = quantize(_model(), 8)
    assert report.method == "torch-dynamic-int8"
    assert report.unavailable == {"torch-packed-int8": "too slow here: 6000 ms against torch-dynamic-int8's 1000 ms"}
    assert report.summary().endswith("; too slow here to time: torch-packed-int8")


def test_a_remembered_choice_whose_spread_overlaps_is_measured_again(monkeypatch, tmp_path):
    order = scripted_timings(monkeypatch, {
        "float32": [1.0] * 7 + [1.0] * 3,
        "torch-dynamic-int8": [0.5, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5] + [0.8] * 3,  # first 7: overlap packed's
        "torch-packed-int8": [0.7] * 7 + [0.6] * 3})                           # last 3: told apart
    first = quantize(_model(), 8)
    assert first.method == "torch-dynamic-int8" and not first.cached and len(order) == 3 * 7
    second = quantize(_model(), 8)
    assert not second.cached and second.method == "torch-packed-int8" and len(order) == 3 * 7 + 3 * 3
    assert _cache(tmp_path)[machine_key(_model(), 8)]["measurements"] == 2
    third = quantize(_model(), 8)
    assert third.cached and third.method == "torch-packed-int8" and len(order) == 3 * 7 + 3 * 3


def test_a_tie_is_measured_three_times_then_its_lowest_median_is_kept(monkeypatch, tmp_path):
    tied = [0.5, 0.6, 0.5, 0.6, 0.5, 0.6, 0.5]  # median 0.5, but its 0.6 overlaps packed's 0.55 every time
    order = scripted_timings(monkeypatch, {"float32": [1.0] * 21, "torch-dynamic-int8": tied * 3,
                                           "torch-packed-int8": [0.55] * 21})
    reports = [quantize(_model(), 8) for _ in range(4)]
    assert [r.cached for r in reports] == [False, False, False, True]
    assert [r.method for r in reports] == ["torch-dynamic-int8"] * 4
    assert len(order) == 3 * 3 * 7 and _cache(tmp_path)[machine_key(_model(), 8)]["measurements"] == 3


@pytest.mark.parametrize("remembered", [
    {"method": "float32", "seconds": {"float32": 0.626, "torch-packed-int8": 0.515}},  # the old fallback
    {"method": "torch-dynamic-int8", "seconds": {"float32": 1.0, "torch-dynamic-int8": 0.5}},  # no times kept
])
def test_a_choice_remembered_before_this_rule_is_measured_again(remembered, monkeypatch, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "quantize-choices.json").write_text(json.dumps({machine_key(_model(), 8): remembered}))
    order = scripted_timings(monkeypatch, {"float32": [0.5] * 3, "torch-dynamic-int8": [1.0] * 3,
                                           "torch-packed-int8": [0.9] * 3})
    report = quantize(_model(), 8)
    assert not report.cached and report.method == "torch-packed-int8" and len(order) == 3 * 3
    assert _cache(tmp_path)[machine_key(_model(), 8)]["measurements"] == 1


def test_auto_bang_measures_again_and_starts_the_count_afresh(monkeypatch, tmp_path):
    order = scripted_timings(monkeypatch, {"float32": [1.0] * 6, "torch-dynamic-int8": [0.5] * 3 + [0.9] * 3,
                                           "torch-packed-int8": [0.7] * 6})
    assert quantize(_model(), 8).method == "torch-dynamic-int8"
    assert quantize(_model(), 8).cached and len(order) == 9  # told apart: remembered
    again = quantize(_model(), 8, "auto!")
    assert not again.cached and again.method == "torch-packed-int8" and len(order) == 18
    assert _cache(tmp_path)[machine_key(_model(), 8)]["measurements"] == 1


ENTRY = {"method": "torch-packed-int4", "measurements": 1,
         "times": {"float32": [0.40, 0.41], "torch-packed-int4": [0.50, 0.52], "torchao-int4-weight-only": [0.6, 0.7]}}


@pytest.mark.parametrize("change, bits, reused", [
    ({}, 4, True),  # 0.52 < 0.6: told apart from the other int4 method (float32 being faster does not matter)
    ({"times": {**ENTRY["times"], "torchao-int4-weight-only": [0.51, 0.7]}}, 4, False),  # spreads overlap
    ({"times": {**ENTRY["times"], "torchao-int4-weight-only": [0.51, 0.7]}, "measurements": 3}, 4, True),  # a tie
    ({"method": "float32"}, 4, False),
    ({}, 8, False),  # an int4 choice does not answer for int8
    ({"times": None}, 4, False),
])
def test_which_remembered_choices_are_reused(change, bits, reused):
    assert q.settled({**ENTRY, **change}, bits) is reused


def test_the_summary_names_the_method_the_sizes_and_the_measured_speed():
    report = QuantizationReport(bits=4, method="torch-packed-int4", layers=3, weight_bytes=(4 << 20, 1 << 20),
                                seconds={"float32": 0.626, "torch-packed-int4": 0.515}, cached=True)
    assert report.summary() == ("quantized 3 linear layers to int4 with torch-packed-int4; weights 4.0 -> 1.0 MiB; "
                                "515 ms per answer, 1.22x float32's 626 ms (remembered from an earlier measurement: "
                                "torch-packed-int4 515 ms, float32 626 ms)")
    named = QuantizationReport(bits=8, method="torch-dynamic-int8", layers=3, weight_bytes=(4 << 20, 1 << 20))
    assert named.summary() == "quantized 3 linear layers to int8 with torch-dynamic-int8; weights 4.0 -> 1.0 MiB"


def test_the_memory_is_keyed_by_cpu_flags_and_torch_version(monkeypatch):
    model = _model()
    monkeypatch.setattr(q, "cpu_flags", lambda cpuinfo: ("Some CPU", ["avx2", "f16c", "fma"]))
    with_fma = machine_key(model, 4)
    monkeypatch.setattr(q, "cpu_flags", lambda cpuinfo: ("Some CPU", ["avx2", "f16c"]))
    without_fma = machine_key(model, 4)
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    other_torch = machine_key(model, 4)
    assert len({with_fma, without_fma, other_torch}) == 3


def test_cpu_flags_are_read_on_x86_and_on_arm():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 fma avx512_bf16\n\nprocessor\t: 1\n"
    arm = "processor\t: 0\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd bf16 i8mm sve\nCPU part\t: 0xd40\n"
    assert q.cpu_flags(x86) == ("AMD EPYC 9R14", ["avx2", "avx512_bf16", "fma", "fpu"])
    assert q.cpu_flags(arm) == ("0xd40", ["asimd", "bf16", "fp", "i8mm", "sve"])
