"""The networks of the competing methods, and two helpers every network-training module uses."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA only: CPU runs stay in float32 and bit-reproducible."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_parameters(*modules: nn.Module) -> int:
    """Trainable and frozen parameters of ``modules`` together."""
    return int(sum(p.numel() for m in modules for p in m.parameters()))
