"""The compiled decode step (`decode="compiled"`): static_decode_step through torch.compile, compiled once per model
architecture and kept on disk, so a second process on the same model does not compile again.

- A few graphs serve every cache length: the compiled step's caches are powers of two long (static_shapes), so a
  longer prompt or answer compiles at most once per doubling (before, each 64-position bucket did). A length
  marked dynamic instead (one graph) measured slower per token and missed the disk cache with torch 2.14.
- On disk: Inductor's caches (its FX graph and AOTAutograd caches, on by default in torch) live under the user's
  cache folder instead of the temporary directory: `$MMLLM_CACHE_DIR/inductor`, else `~/.cache/mmllm/inductor`.
  Inductor keys its entries by the traced graph (so by the model's architecture, dtype and quantisation, not its
  weights, which are inputs), torch's version and the CPU's instruction set; a TORCHINDUCTOR_CACHE_DIR the user set
  is left as it is. A second process still traces the step with Dynamo
  (seconds), but compiles nothing.
- The first compile of an architecture prints one line: what it does, about how long it takes, where it is kept. A
  record of each finished compile (`decode-steps.json` in the cache folder) is what tells first from later.
- A compile that fails prints one line and the generation goes on with the same step uncompiled (the `static`
  decode: the same tokens).
- Inductor's default options: its cpp_wrapper (no Python between a step's kernels) measured no faster per token on
  a CPU, and 2.5x as long to compile (bench/compiled_decode.py).
- The first token never waits for the compiler: prefill is not compiled, and the cache is marked for torch.compile
  (which imports Dynamo, seconds) only before the first compiled step.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import torch

from mmllm.machine import this_cpu

RECORD = "decode-steps.json"
SECONDS_PER_LAYER = {"cpu": 1.5, "cuda": 1.5}  # a cold compile's rough cost (bench/compiled_decode.py), for the announcement


def record_file() -> Path:
    """The record of finished compiles, beside Inductor's own caches (mmllm's import points those at its cache
    folder unless the user chose TORCHINDUCTOR_CACHE_DIR)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or cache_dir()) / RECORD


def model_key(model: torch.nn.Module, device: torch.device) -> str:
    """What a model's compiled graphs are specific to: the architecture, the weights' dtypes and kinds (quantised
    layers are other modules), the device kind, torch's version and the CPU's flags."""
    kinds = sorted({type(m).__name__ for m in model.lm.modules()})
    dtypes = sorted({str(p.dtype) for p in model.lm.parameters()})
    text = json.dumps([vars(model.config.lm), kinds, dtypes, device.type, torch.__version__, this_cpu()[1]],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_record(path: Path, key: str, entry: dict[str, Any]) -> None:
    record = _read_record(path)
    record[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(record, indent=1))
        temporary.replace(path)
    except OSError as error:  # a read-only cache folder costs a compile next time, nothing else
        print(f"mmllm: could not record the compiled decode step in {path} ({error.strerror}); the next run "
              "compiles it again", file=sys.stderr, flush=True)


def compiler_options(device: torch.device) -> dict[str, Any]:
    """Inductor's options for the step: its defaults. cpp_wrapper (kernels called from C++, no Python between them)
    measured no faster per token on a CPU and took 2.5x as long to compile (bench/compiled_decode.py)."""
    return {}


class CompiledDecodeStep:
    """static_decode_step through torch.compile, announced on its first compile and falling back to the uncompiled
    step, with one line, when compiling fails."""

    def __init__(self, device: torch.device, step: Callable) -> None:
        self.device = device
        self.eager = step  # mmllm.model.generation.static_decode_step
        self.mode = "reduce-overhead" if device.type == "cuda" else None
        options = None if self.mode else compiler_options(device)
        self.compiled = torch.compile(step, mode=self.mode, options=options)
        self.failed: str | None = None
        self.seen: set[str] = set()  # keys compiled (or loaded from disk) in this process
        self.model_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> model_key, once

    def __call__(self, model, tokens: torch.Tensor, positions: torch.Tensor, cache, key_is_real: torch.Tensor):
        if self.failed is not None:
            return self.eager(model, tokens, positions, cache, key_is_real)
        if model not in self.model_keys:  # hashing the architecture each token would cost a millisecond
            self.model_keys[model] = model_key(model, self.device)
        key = f"{self.model_keys[model]}:{tokens.size(0)}x{cache.max_len}"  # one graph: rows x positions
        if key in self.seen:
            return self.compiled(model, tokens, positions, cache, key_is_real)
        return self._first_call(key, model, tokens, positions, cache, key_is_real)

    def _first_call(self, key: str, model, *inputs):
        record_path = record_file()
        known = _read_record(record_path).get(key)
        if known is None:
            layers = model.config.lm.n_layers
            estimate = SECONDS_PER_LAYER.get(self.device.type, 3.0) * layers
            length = key.rsplit("x", 1)[1]
            print(f"mmllm: compiling the decode step for this model and {length} positions once (about "
                  f"{estimate:.0f} s for {layers} layers; kept in {record_path.parent}, later runs skip it)",
                  file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            logits = self.compiled(model, *inputs)
        except Exception as error:  # noqa: BLE001 (any compiler failure: the uncompiled step gives the same tokens)
            message = " ".join(str(error).split())[:200]
            print(f"mmllm: compiling the decode step failed ({type(error).__name__}: {message}); decoding "
                  "uncompiled", file=sys.stderr, flush=True)
            self.failed = message
            return self.eager(model, *inputs)
        seconds = time.perf_counter() - start
        self.seen.add(key)
        if known is None:
            _write_record(record_path, key, {"seconds": round(seconds, 1), "torch": torch.__version__,
                                             "layers": model.config.lm.n_layers, "when": time.strftime("%Y-%m-%d")})
        return logits


_STEPS: dict[str, CompiledDecodeStep] = {}


def compiled_decode_step(device: torch.device | str, step: Callable) -> Callable:
    """The process's compiled `step` (generation's static_decode_step) for a device kind (torch.compile keeps its
    graphs per shape and guards)."""
    device = torch.device(device)
    if device.type not in _STEPS:
        _STEPS[device.type] = CompiledDecodeStep(device, step)
    return _STEPS[device.type]


def compiled_before(model: torch.nn.Module, device: torch.device | str) -> bool:
    """Whether this model's step was compiled before on this machine with this torch (any cache length): the
    kernels are then on disk and a process only traces the step again (seconds)."""
    key = model_key(model, torch.device(device))
    return any(known.startswith(f"{key}:") for known in _read_record(record_file()))
