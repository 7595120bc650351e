"""What machine this is: CPU model and flags, cores, GPU; and whether bf16 is native on it.

One owner for the question "is bf16 fast here?": :func:`native_bf16`. On a CPU, bf16 autocast
is fast only with the ``avx512_bf16`` or ``amx_bf16`` instructions; without them PyTorch
emulates it, measured ~40× slower than fp32 (0.24 against 9.4 slices/s, ResNet50 U-Net, 2-core
AVX2-only EPYC). ``torch.backends.cpu.get_cpu_capability()`` says "AVX512" on CPUs with or
without BF16, so the flags are read from ``/proc/cpuinfo``.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

__all__ = [
    "BF16_CPU_FLAGS",
    "EMULATED_BF16_SLOWDOWN",
    "REPORTED_CPU_FLAGS",
    "cpu_flags",
    "cpu_model",
    "native_bf16",
    "machine_info",
]

BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
REPORTED_CPU_FLAGS: tuple[str, ...] = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
)  # fmt: skip
EMULATED_BF16_SLOWDOWN = 40  # measured: bf16 autocast without native bf16, vs fp32
_CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo ({} where there is none)."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor only
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx2``, ``avx512_bf16``…); empty where they are unknown."""
    fields = _cpuinfo_fields()
    return frozenset((fields.get("flags") or fields.get("Features") or "").split())


def cpu_model() -> str:
    """The CPU's model name."""
    return _cpuinfo_fields().get("model name") or platform.processor() or platform.machine()


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether bf16 runs natively: any CUDA GPU, or a CPU with AVX-512 BF16 or AMX BF16."""
    if device_type == "cuda":
        return True
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def machine_info() -> dict[str, Any]:
    """CPU model, the flags that matter for speed, cores and GPU of this process's machine."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_flags": sorted(cpu_flags() & set(REPORTED_CPU_FLAGS)),
        "cpu_count": os.cpu_count(),
        "native_bf16": native_bf16("cuda" if gpu else "cpu"),
        "gpu": gpu,
        "gpu_count": torch.cuda.device_count() if gpu else 0,
    }
