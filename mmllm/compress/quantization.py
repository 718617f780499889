"""Quantised inference on the CPU: int8 or int4 weights for every linear layer, through torch's own dynamic
quantisation or torchao, with the fastest method for this machine chosen by measuring each one.

Which method is fastest depends on the CPU by a factor of five (AVX2, AVX-512 VNNI, AMX each favour another
kernel), so `--quantize int8` does not name a kernel: `quantize(model, 8)` times answers with every int8 method
that can run here, and float32 for reference, interleaved round by round (a machine that slows down
mid-measurement slows all of them alike), for at least MIN_ROUNDS rounds and until the fastest method is told
apart from the other methods (its slowest answer beats their fastest) or MAX_ROUNDS have run. It applies the
method with the lowest median, even where float32 answers faster: a user who asks for int4 gets int4 (the
summary says when it saves memory, not time). The choice is remembered per CPU and its flags, library versions,
thread count and model shape (in ~/.cache/mmllm/quantize-choices.json, or $MMLLM_CACHE_DIR) with its timings;
a remembered choice that was not told apart is measured again, up to MAX_MEASUREMENTS times (then the methods
are tied and its lowest median stands); `auto!` measures again and replaces what was remembered.

Methods (`METHODS`):
- torch-dynamic-int8: torch.ao's dynamic quantisation (int8 weights per output channel, activations quantised
  per call); fbgemm/oneDNN kernels. torch marks the API deprecated in favour of torchao, and it is still the
  fastest on every CPU measured so far (README "Smaller models").
- torchao-int8-weight-only, torchao-int8-dynamic: torchao's Int8WeightOnlyConfig and
  Int8DynamicActivationInt8WeightConfig, its maintained int8 paths (eager).
- torchao-int4-weight-only: torchao's CPU int4 (tinygemm `_weight_int4pack_mm_for_cpu`), asymmetric groups of
  128, 64 or 32 input channels: the largest that divides the layer's width.
- torchao-int8-dynamic-int4: torchao's DA8W4 CPU kernel, where this torchao build has it.
- torch-packed-int8, torch-packed-int4: mmllm.compress.packed's layers over torch's own weight-only kernels
  (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) with bfloat16 activations for decoding, and a
  dequantised bfloat16 GEMM for prompts; no tensor subclass between the model and the kernel. Measured on a
  2-core AVX-512 BF16 EPYC, int4 decodes SmolLM2-135M 7x faster than torchao's int4 (bench/vs_llama_cpp.py).

A layer that a method cannot take (int4: an input width no group size divides, or an output width not a
multiple of 16) stays in float32, and the report says which: torchao would skip it silently.
The tied LM head is given its own copy of the embedding matrix so that it is quantised too (it is a fifth of
a decode step's work in `small`); the embedding lookup stays in float32.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import hashlib
import json
import logging
import os
import platform
import statistics
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mmllm.compress.packed import int4_group_size
from mmllm.errors import UsageError
from mmllm.machine import cpu_flags

BITS = {"int8": 8, "int4": 4}
FLOAT32 = "float32"  # the reference timed beside the methods; never chosen: `--quantize int4` means int4
MIN_ROUNDS, MAX_ROUNDS = 3, 7  # interleaved timing rounds
MAX_MEASUREMENTS = 3  # a remembered choice not told apart is measured again until it has been measured this often
TOO_SLOW = 5  # a method whose first answer takes this many times the fastest method's is not timed further


@dataclass(frozen=True)
class Method:
    name: str
    bits: int
    library: str
    apply: Callable[[nn.Module, dict[str, int | None]], None]  # (model, layer name -> int4 group size) in place
    kernel: str = ""  # what runs the matmul, for the report


@dataclass
class QuantizationReport:
    """What `quantize` did: the method, the layers it left in float and what it measured (seconds per answer)."""

    bits: int
    method: str
    layers: int
    float_layers: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # method (and "float32") -> median seconds per answer
    spread: dict[str, float] = field(default_factory=dict)  # method (and "float32") -> max - min of its answers
    unavailable: dict[str, str] = field(default_factory=dict)  # method -> why it cannot run here
    weight_bytes: tuple[int, int] = (0, 0)  # (float32, quantised) bytes of the weights
    cached: bool = False

    @property
    def speedup(self) -> float | None:
        if "float32" not in self.seconds or self.method not in self.seconds:
            return None
        return self.seconds["float32"] / self.seconds[self.method]

    def summary(self) -> str:
        """One line for the command line: the method, the weights' size before and after, the measured speed."""
        before, after = (b / 2**20 for b in self.weight_bytes)
        text = f"quantized {self.layers} linear layers to int{self.bits} with {self.method}"
        if self.float_layers:
            text += f" ({len(self.float_layers)} kept in float32: {', '.join(self.float_layers[:3])}"
            text += ", ..." if len(self.float_layers) > 3 else ""
            text += ")"
        text += f"; weights {before:.1f} -> {after:.1f} MiB"
        speedup = self.speedup
        if speedup is not None:
            ms = {name: f"{s * 1e3:.0f} ms" for name, s in sorted(self.seconds.items(), key=lambda kv: kv[1])}
            how = "remembered from an earlier measurement" if self.cached else "measured now"
            text += f"; {ms[self.method]} per answer, {speedup:.2f}x float32's {ms[FLOAT32]}"
            if speedup <= 1.0:
                text += f" (no int{self.bits} method beats float32 here: it saves memory, not time)"
            text += f" ({how}: {', '.join(f'{name} {t}' for name, t in ms.items())})"
        slow = sorted(name for name, why in self.unavailable.items() if why.startswith("too slow"))
        if slow:
            text += f"; too slow here to time: {', '.join(slow)}"
        if len(slow) < len(self.unavailable):
            text += f"; cannot run here: {', '.join(sorted(set(self.unavailable) - set(slow)))}"
        return text


# ----------------------------------------------------------------------------------------------------------
# The methods


@contextmanager
def _quiet():
    """Silence the deprecation notices of torch.ao and the import-time log lines of torchao."""
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pytree.setLevel(level)


def _torch_dynamic_int8(model: nn.Module, layers: dict[str, int | None]) -> None:
    with _quiet():
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in layers}, dtype=torch.qint8,
                         inplace=True)


def _torchao(make_config: Callable[[int | None], object]) -> Callable[[nn.Module, dict[str, int | None]], None]:
    """Apply a torchao config, one call per group size (torchao takes one config per call)."""

    def apply(model: nn.Module, layers: dict[str, int | None]) -> None:
        with _quiet():
            from torchao.quantization import quantize_

            for group_size in sorted(set(layers.values()), key=str):
                chosen = {name for name, g in layers.items() if g == group_size}
                quantize_(model, make_config(group_size), filter_fn=lambda module, fqn: fqn in chosen)

    return apply


def _int8_weight_only(_group_size):
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def _int8_dynamic(_group_size):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    return Int8DynamicActivationInt8WeightConfig()


def _int4_weight_only(group_size):
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False)


def _int8_dynamic_int4(group_size):
    from torchao.prototype.quantization.int4 import Int8DynamicActivationInt4WeightConfig

    return Int8DynamicActivationInt4WeightConfig(group_size=group_size, set_inductor_config=False)


def _packed(bits: int) -> Callable[[nn.Module, dict[str, int | None]], None]:
    """Replace each chosen nn.Linear by mmllm.compress.packed's Int8Linear or Int4Linear (in place)."""

    def apply(model: nn.Module, layers: dict[str, int | None]) -> None:
        from mmllm.compress.packed import Int4Linear, Int8Linear

        for name, group in layers.items():
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            linear = getattr(owner, child)
            setattr(owner, child, Int8Linear(linear) if bits == 8 else Int4Linear(linear, group))

    return apply


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("torch-dynamic-int8", 8, "torch", _torch_dynamic_int8, "fbgemm / oneDNN int8 GEMM"),
    Method("torchao-int8-weight-only", 8, "torchao", _torchao(_int8_weight_only), "int8 weights, float GEMM"),
    Method("torchao-int8-dynamic", 8, "torchao", _torchao(_int8_dynamic), "int8 x int8 _int_mm"),
    Method("torchao-int4-weight-only", 4, "torchao", _torchao(_int4_weight_only), "tinygemm int4 CPU kernel"),
    Method("torchao-int8-dynamic-int4", 4, "torchao", _torchao(_int8_dynamic_int4), "DA8W4 CPU kernel"),
    Method("torch-packed-int8", 8, "torch", _packed(8), "_weight_int8pack_mm, bfloat16 activations"),
    Method("torch-packed-int4", 4, "torch", _packed(4), "_weight_int4pack_mm_for_cpu, bfloat16 activations"),
)}


def methods_for(bits: int) -> list[Method]:
    return [m for m in METHODS.values() if m.bits == bits]


def parse_bits(text: str) -> int:
    if text not in BITS:
        raise UsageError(f"--quantize takes {' or '.join(BITS)}, got {text!r}")
    return BITS[text]


# ----------------------------------------------------------------------------------------------------------
# Which layers


def untie_head(model: nn.Module) -> None:
    """Give a tied LM head its own weight (a copy of the embedding), so quantisation reaches it."""
    lm = model.lm
    if lm.lm_head is None:
        head = nn.Linear(lm.config.dim, lm.config.vocab_size, bias=False)
        head.weight = nn.Parameter(lm.embed_tokens.weight.detach().clone(), requires_grad=False)
        lm.lm_head = head


def plan_layers(model: nn.Module, bits: int) -> tuple[dict[str, int | None], list[str]]:
    """(layer name -> int4 group size (None for int8) of every linear that can be quantised, names kept float)."""
    chosen, kept = {}, []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if bits == 8:
            chosen[name] = None
            continue
        group = int4_group_size(module)
        if group is None:
            kept.append(name)
        else:
            chosen[name] = group
    return chosen, kept


def weight_bytes(model: nn.Module, layers: dict[str, int | None], bits: int | None) -> int:
    """Bytes of the model's weights: float tensors as stored, quantised linears as int8 / packed int4 plus their
    float scales (one per output channel for int8; a scale and a zero point per group for int4)."""
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if bits is None:
        return total
    modules = dict(model.named_modules())
    for name, group in layers.items():
        w = modules[name].weight
        scales = w.shape[0] * 4 if bits == 8 else w.shape[0] * (w.shape[1] // group) * 2 * 2
        total += w.numel() * bits // 8 + scales - w.numel() * w.element_size()
    return total


# ----------------------------------------------------------------------------------------------------------
# Measuring and choosing


def answer_seconds(model: nn.Module, new_tokens: int = 8, repeats: int = 2, warm_up: bool = True) -> float:
    """The fastest of `repeats` timed answers (after one untimed warm-up answer unless warm_up=False; repeats=0:
    the warm-up answer's own time): one image and 16 prompt tokens in, `new_tokens` greedy tokens out (image
    encoding, prefill and decode: what one `ask` costs)."""
    from mmllm.model.generation import stream

    config = model.config
    low = max(config.image_token_id, config.pad_token_id, *config.eos_token_ids) + 1
    g = torch.Generator().manual_seed(0)
    text = torch.randint(low, config.lm.vocab_size, (1, 16), generator=g)
    pixels = None  # a language model alone answers from its 16 prompt tokens
    ids = text
    if config.reads_images:
        image = torch.full((1, config.tokens_per_image), config.image_token_id)
        size = config.vision.image_size
        pixels = torch.randn(1, 3, size, size, generator=g)
        ids = torch.cat([image, text], 1)
    times = []
    with torch.inference_mode():
        for _ in range(max(1, repeats + int(warm_up))):
            start = time.perf_counter()
            for _step in stream(model, ids, pixel_values=pixels, max_new_tokens=new_tokens, stop_ids=[]):
                pass
            times.append(time.perf_counter() - start)
    timed = times[1:] if warm_up and len(times) > 1 else times
    return min(timed)


def cache_path() -> Path:
    from mmllm.cache_folder import cache_folder

    return cache_folder() / "quantize-choices.json"


def machine_key(model: nn.Module, bits: int) -> str:
    """What a measured choice depends on: the CPU and its flags, its kernels, the libraries, the threads, the
    model's shape."""
    try:
        cpu, flags = cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux
        cpu, flags = "", []
    try:
        from importlib.metadata import version

        torchao_version = version("torchao")
    except Exception:  # not installed
        torchao_version = None
    c = model.config
    shape = [c.lm.dim, c.lm.n_layers, c.lm.mlp_dim, c.lm.vocab_size, c.lm.n_heads, c.lm.n_kv_heads, c.lm.head_dim,
             None if c.vision is None else [c.vision.dim, c.vision.n_layers, c.vision.n_heads, c.vision.image_size,
                                            c.vision.patch_size, c.pixel_shuffle, c.projector], c.tokens_per_image]
    parts = [cpu or platform.processor() or platform.machine(), flags, torch.backends.cpu.get_cpu_capability(),
             torch.__version__, torchao_version, torch.get_num_threads(), shape, bits]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()
        data[key] = entry
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(partial, path)
    except OSError:
        pass  # a read-only home: measure again next time


def apply_method(model: nn.Module, method: Method, layers: dict[str, int | None]) -> nn.Module:
    """The model with `layers` quantised by `method`, in place; an ImportError or RuntimeError says it cannot run."""
    model.eval()
    method.apply(model, layers)
    return model


def quantize(model: nn.Module, bits: int, method: str = "auto") -> QuantizationReport:
    """Quantise a float32 CPU VLM in place (its LM head untied first) and say what was done.

    method "auto" measures every `bits` method that can run here (and float32, for the report) and applies the
    fastest, or reuses the choice remembered for this machine when that one was told apart (`settled`); "auto!"
    measures again and replaces the remembered choice; a method's name applies that one, unmeasured.
    """
    if method not in ("auto", "auto!") and (method not in METHODS or METHODS[method].bits != bits):
        names = ", ".join(m.name for m in methods_for(bits))
        raise UsageError(f"no int{bits} quantization method {method!r}; choose auto, auto! or one of {names}")
    params = list(model.parameters())
    if params and params[0].device.type != "cpu":
        raise UsageError("--quantize runs on the CPU; on a GPU use --dtype bfloat16")
    if params and params[0].dtype != torch.float32:
        raise UsageError("--quantize takes a float32 model; leave --dtype at auto or float32")
    model.eval()
    before = weight_bytes(model, {}, None)
    untie_head(model)
    layers, kept = plan_layers(model, bits)
    report = QuantizationReport(bits=bits, method=method, layers=len(layers), float_layers=kept,
                                weight_bytes=(before, weight_bytes(model, layers, bits)))
    if method in ("auto", "auto!"):
        key = machine_key(model, bits)
        entry = _read_cache().get(key) if method == "auto" else None
        if settled(entry, bits):
            report.cached = True
        else:  # nothing remembered, a choice not told apart, or one written before this rule: measure
            earlier = entry.get("measurements", 1) if _well_formed(entry, bits) else 0
            entry = _measure(model, bits, layers) | {"measurements": earlier + 1}
            _write_cache(key, entry)
        report.method = entry["method"]
        report.seconds = entry.get("seconds", {})
        report.spread = entry.get("spread", {})
        report.unavailable = entry.get("unavailable", {})
    try:
        apply_method(model, METHODS[report.method], layers)
    except ImportError:
        raise UsageError(f"{report.method} needs torchao: pip install 'mmllm[quantize]'") from None
    except (RuntimeError, AssertionError, NotImplementedError) as error:
        raise UsageError(f"{report.method} cannot run on this machine: {str(error).splitlines()[0][:200]}") from None
    release_freed_memory()
    return report


def release_freed_memory() -> None:
    """Hand the float weights' freed pages back to the system (glibc keeps freed heap for reuse otherwise, so
    the resident memory would not show what quantisation saved)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the pages are reused by later allocations all the same
        pass


def choose(times: dict[str, list[float]]) -> str:
    """The method with the lowest median answer time; float32 is timed for the report, never chosen."""
    methods = [name for name in times if name != FLOAT32]
    return min(methods, key=lambda name: statistics.median(times[name]))


def told_apart(times: dict[str, list[float]], chosen: str) -> bool:
    """Whether `chosen`'s slowest answer beats every other method's fastest: their spreads do not overlap."""
    return all(max(times[chosen]) < min(t) for name, t in times.items() if name not in (chosen, FLOAT32))


def _well_formed(entry, bits: int) -> bool:
    """Whether a remembered entry is one this rule wrote: a `bits` method and the answer times it was chosen on."""
    if not isinstance(entry, dict):
        return False
    method, times = entry.get("method"), entry.get("times")
    return (method in METHODS and METHODS[method].bits == bits and isinstance(times, dict) and method in times
            and all(isinstance(t, list) and t for t in times.values()))


def settled(entry, bits: int) -> bool:
    """Whether a remembered choice may be reused: it was told apart from the other methods, or it has been
    measured MAX_MEASUREMENTS times without that (a tie: any of the tied methods will do)."""
    if not _well_formed(entry, bits):
        return False
    return told_apart(entry["times"], entry["method"]) or entry.get("measurements", 1) >= MAX_MEASUREMENTS


def _measure(model: nn.Module, bits: int, layers: dict[str, int | None]) -> dict:
    """{"method": the choice, "times": each contender's answer seconds, round by round, "seconds": their medians,
    "spread": their max - min, "rounds", "unavailable": method -> why}; float32 and the methods that run here
    timed in turn, round by round."""
    answer_seconds(model, repeats=0)  # warms float32 up
    contenders: dict[str, nn.Module] = {FLOAT32: model}
    first_answer, unavailable = {}, {}
    for method in methods_for(bits):
        trial = copy.deepcopy(model)
        try:
            apply_method(trial, method, layers)
            first_answer[method.name] = answer_seconds(trial, repeats=0)  # kernels' packing and caches
        except (ImportError, RuntimeError, AssertionError, NotImplementedError, ValueError) as error:
            unavailable[method.name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            del trial
            continue
        contenders[method.name] = trial
        release_freed_memory()  # the copy's float weights, replaced by the method's: give their pages back
    if not first_answer:
        hint = " (pip install 'mmllm[quantize]' for torchao's)" if any("ImportError" in v for v in unavailable.values()) else ""
        raise UsageError(f"no int{bits} method runs on this machine{hint}: "
                         + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
    # far behind the fastest method already: not worth the rounds (float32 is no yardstick: int4 must stay int4)
    fastest = min(first_answer, key=first_answer.get)
    for name, seconds in first_answer.items():
        if seconds > TOO_SLOW * first_answer[fastest]:
            unavailable[name] = f"too slow here: {seconds * 1e3:.0f} ms against {fastest}'s {first_answer[fastest] * 1e3:.0f} ms"
            del contenders[name]
    release_freed_memory()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(MAX_ROUNDS):
        for name, candidate in contenders.items():
            times[name].append(answer_seconds(candidate, repeats=1, warm_up=False))
        if round_ + 1 >= MIN_ROUNDS and told_apart(times, choose(times)):
            break
    del contenders
    return {"method": choose(times), "times": times,
            "seconds": {name: statistics.median(t) for name, t in times.items()},
            "spread": {name: max(t) - min(t) for name, t in times.items()},
            "rounds": len(times[FLOAT32]), "unavailable": unavailable}
