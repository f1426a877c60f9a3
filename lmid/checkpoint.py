"""Checkpoints that resume, and safe loading.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, saved with
``torch.save`` through an atomic rename and always loaded with ``weights_only=True`` (no pickle of
arbitrary objects). Randomness inside training comes from explicit ``torch.Generator`` objects
whose states are stored, so "N steps, stop, resume, N steps" equals "2N steps".
"""

from __future__ import annotations

import io

from pathlib import Path

import torch

from lmid.errors import InputFileError
from lmid.io import atomic_path


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Save ``state``; equal weights give byte-identical files (DVC then sees no change).

    ``torch.save`` to a path records that path's name inside the zip archive, and the temporary
    name differs on every run; saved to memory the archive always has the same name."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path, suffix=".pt") as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu", required: tuple[str, ...] = ()) -> dict:
    """Load with ``weights_only=True``; a truncated or foreign file gets a clear error."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds here; all mean "not a checkpoint we can use"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputFileError(
            path, f"not a valid lmid checkpoint (truncated, corrupt or not a checkpoint: {first})"
        ) from None
    if not isinstance(state, dict):
        raise InputFileError(path, f"not an lmid checkpoint (holds a {type(state).__name__}, expected a dict)")
    missing = [k for k in required if k not in state]
    if missing:
        raise InputFileError(path, f"not an lmid checkpoint of this kind: missing {missing}")
    return state


def load_module_state(module: torch.nn.Module, state_dict: dict, path: str | Path, what: str = "model") -> None:
    """``load_state_dict`` whose failure (another architecture) names the file."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[:3])
        raise InputFileError(
            path,
            f"{what} weights do not match the configured architecture (trained with other parameters?): {detail[:400]}",
        ) from None


def device_from_arg(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; the same code path runs on CPU."""
    from lmid.errors import ParamsError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ParamsError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"--device {name}: this machine has no CUDA GPU that torch can use (try --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ParamsError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParamsError(
            f"--device {name}: this machine has no Apple MPS device that torch can use (try --device cpu)"
        )
    if device.type not in ("cpu", "cuda", "mps"):
        raise ParamsError(f"--device {name}: lmid runs on cpu, cuda or (Apple) mps")
    return device
