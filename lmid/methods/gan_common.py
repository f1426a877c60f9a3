"""Small helpers shared by the GAN trainers (CycleGAN, StyleGAN2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmid.io import write_text


def write_train_log(path: Path, columns: list[str], rows: list[list[float]]) -> None:
    """Rewrite the (small) loss log atomically."""
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(str(int(v)) if i == 0 else f"{v:.6g}" for i, v in enumerate(row)))
    write_text(path, "\n".join(lines) + "\n")


def to_signed(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W) in [0, 1] → (N, 1, H, W) float32 in [-1, 1] on ``device``."""
    return (torch.as_tensor(np.asarray(x, dtype=np.float32)).unsqueeze(1) * 2.0 - 1.0).to(device)
