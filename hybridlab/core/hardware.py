"""What the hardware computes fast, for defaults that should follow the machine."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic; without them torch emulates bf16 matmuls
# in fp32 plus conversions, and a demo training step measured ~15x slower than plain fp32 on AVX2.
_NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(device_type: str) -> bool:
    """Whether bf16 autocast is likely faster than fp32 on this kind of device here."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(set(cpu_flags()) & set(_NATIVE_BF16_CPU_FLAGS))
    return False


@lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    """This CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            return tuple(line.split(":", 1)[1].split())
    return ()
