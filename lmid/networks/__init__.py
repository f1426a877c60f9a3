"""The networks of the competing methods, and two helpers every network-training module uses."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from torch import nn


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AMX or AVX512-BF16; read from Linux's cpuinfo).

    Without those units oneDNN emulates bf16 and autocast makes a step slower, not faster.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore")
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("amx_bf16", "avx512_bf16"))


def uses_bf16(device: torch.device, enabled: bool = True, cpu: bool = False) -> bool:
    """Whether :func:`autocast` turns bf16 on for ``device`` (CPU only with ``cpu`` and bf16 units)."""
    device = torch.device(device)
    if not enabled:
        return False
    if device.type == "cuda":
        return True
    return cpu and device.type == "cpu" and cpu_has_bf16()


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False):
    """bf16 autocast on CUDA, and on CPU too when ``cpu`` is set and the CPU has bf16 units.

    Weights, optimiser state and losses stay float32; only the autocast region's matmuls and
    convolutions run in bf16. ``cpu`` is an opt-in per caller because it was measured for the
    diffusion U-Net (1.8-2.1x faster, ε̂ within 1 % of the loss; reports/benchmarks/training-cpu.md)
    and not for the GANs.
    """
    device = torch.device(device)
    if uses_bf16(device, enabled, cpu):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_parameters(*modules: nn.Module) -> int:
    """Trainable and frozen parameters of ``modules`` together."""
    return int(sum(p.numel() for m in modules for p in m.parameters()))
