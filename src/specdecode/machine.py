"""Which machine a measurement comes from: the CPU model, its widest vector ISA and the cores available.

Cost curves differ several-fold between an AVX2-only CPU and one with AVX-512 BF16, so the calibration
cache and every benchmark report name both.
"""

from __future__ import annotations

import functools
import os
import platform


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def cpu_model() -> str:
    """The CPU's model name (e.g. "AMD EPYC 9R45"), or the platform's word for it."""
    return _cpuinfo()[0]


def cpu_isa() -> str:
    """The widest vector ISA relevant to inference kernels: "AMX", "AVX-512 BF16", "AVX-512", "AVX2",
    "AVX", "NEON", or the machine type when none of those is known."""
    flags = _cpuinfo()[1]
    for name, flag in (("AMX", "amx_tile"), ("AVX-512 BF16", "avx512_bf16"), ("AVX-512", "avx512f"),
                       ("AVX2", "avx2"), ("AVX", "avx"), ("NEON", "asimd")):
        if flag in flags:
            return name
    return platform.machine()


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def describe() -> str:
    """One line naming the machine, e.g. "AMD EPYC (AVX-512 BF16), 2 cores"."""
    return f"{cpu_model()} ({cpu_isa()}), {available_cores()} cores"
