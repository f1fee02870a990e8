"""What this CPU is and computes natively: its model name and ISA (for logs and the backend cache's key).

Read from ``/proc/cpuinfo`` (what ``lscpu`` prints); on systems without it, ``platform`` names the machine
and the ISA is unknown, so nothing is assumed native.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

# The flags that decide a kernel choice or a precision mode, in the order logs print them.
ISA_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
             "asimd", "bf16", "i8mm", "sve")


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``)."""
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        if name and flags:
            break
    return name, flags


@functools.cache
def _cpu() -> tuple[str, frozenset[str]]:
    try:
        name, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        name, flags = "", frozenset()
    return name or platform.processor() or platform.machine() or "unknown CPU", flags


def cpu_model() -> str:
    """The CPU's model name, e.g. ``Intel(R) Xeon(R) Processor`` or ``AMD EPYC 7B13``."""
    return _cpu()[0]


def isa() -> list[str]:
    """The flags of :data:`ISA_FLAGS` this CPU has."""
    flags = _cpu()[1]
    return [f for f in ISA_FLAGS if f in flags]


def cpu_flags() -> frozenset[str]:
    """Every flag the CPU reports (``/proc/cpuinfo``), for kernels that need more than :data:`ISA_FLAGS`."""
    return _cpu()[1]


def native_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16 on x86, BF16 on Arm); elsewhere
    PyTorch emulates it, slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & _cpu()[1])


def cpu_line() -> str:
    """One line for logs: model, ISA, torch version and intra-op threads."""
    return (f"CPU: {cpu_model()} ({' '.join(isa()) or 'ISA unknown'}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
