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


def snapshot_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "snapshots" / f"step{int(step):07d}.pt"


def save_snapshot(out_dir: Path, step: int, model_state: dict, clock) -> None:
    """The inference weights at ``step`` as a loadable ``model.pt``, with the training clock.

    ``meta`` carries the step and the training loop's wall and CPU seconds so far
    (:class:`lmid.clock.TrainClock`), for the snapshot curves and the compute-matched figure."""
    from lmid.checkpoint import save_checkpoint

    save_checkpoint(snapshot_path(out_dir, step), {**model_state, "meta": {"step": int(step), **clock.state()}})
