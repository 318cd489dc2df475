"""Where a run's numbers were computed: the fingerprint that the smoke verdicts compare.

CPU float kernels sum in an order that depends on the vector width ATen dispatches to (AVX512,
AVX2, default), on how many threads a reduction is split over and on the torch build. A seeded
CPU run therefore repeats bit for bit only where all of these agree; elsewhere the smoke run
already differs after a few iterations (:mod:`dnlrepro.reports.smoke_reference`).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

# /proc/cpuinfo flags that change which float kernels run (x86 vector widths, FMA; Arm SIMD).
ISA_FLAGS: tuple[str, ...] = ("avx512f", "avx2", "fma", "avx", "sse4_2", "asimd", "sve")
CPUINFO = Path("/proc/cpuinfo")


def fingerprint() -> dict[str, Any]:
    """CPU model, its float-relevant ISA flags, ATen's CPU capability, torch version, threads."""
    import torch

    flags, model = _cpuinfo(CPUINFO)
    return {
        "cpu": model or platform.processor() or platform.machine() or "unknown",
        "isa": [f for f in ISA_FLAGS if f in flags],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _cpuinfo(path: Path) -> tuple[set[str], str | None]:
    """(flags, model name) of the first CPU listed in ``path``; empty where it is unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set(), None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags") or fields.get("Features") or ""  # x86 / Arm spelling
    return set(flags.split()), fields.get("model name")
