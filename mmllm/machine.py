"""What this machine is, for the choices mmllm measures and remembers per machine (quantisation methods, compiled
decode steps): the CPU's model name and feature flags."""

from __future__ import annotations

import functools
from pathlib import Path


def cpu_flags(cpuinfo: str) -> tuple[str, list[str]]:
    """(the CPU's model name, its sorted feature flags) from /proc/cpuinfo's text: "model name" and "flags" on x86,
    "CPU part" and "Features" on ARM; the first processor's lines."""
    name, flags = "", []
    for line in cpuinfo.splitlines():
        field, _, value = (part.strip() for part in line.partition(":"))
        if field in ("model name", "CPU part") and not name:
            name = value
        elif field in ("flags", "Features") and not flags:
            flags = sorted(value.split())
    return name, flags


def this_cpu() -> tuple[str, list[str]]:
    """cpu_flags of this machine's /proc/cpuinfo; ("", []) where there is none (not Linux)."""
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return "", []


@functools.cache
def cpu_has_bf16_matmul() -> bool:
    """True when the CPU has bf16 matrix instructions (Intel AMX, AVX512-BF16): where bf16 matmuls run several
    times float32's rate instead of through slow reference kernels."""
    flags = this_cpu()[1]
    return "amx_bf16" in flags or "avx512_bf16" in flags
