"""What the report says about where it was made: software versions, git commit, device."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

#: Distribution names whose versions the report lists (in this order).
PACKAGES = (
    "lmid",
    "torch",
    "monai",
    "numpy",
    "scipy",
    "scikit-image",
    "scikit-learn",
    "matplotlib",
    "pandas",
    "nibabel",
    "SimpleITK",
    "nilearn",
    "pydantic",
    "snakemake",
    "dvc",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(cwd: str | Path | None = None) -> dict[str, str | bool]:
    """``git rev-parse HEAD`` of the working copy (``unknown`` without git or outside a repository)."""
    cwd = Path(cwd) if cwd else Path.cwd()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": False}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=20,
        )
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": False}


def device() -> dict[str, str]:
    """The machine the report was built on (training devices come from each train_info.json)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu or "unknown", "cpu_count": str(os.cpu_count())}
    torch = sys.modules.get("torch")
    try:
        if torch is None:
            import torch  # the LMI figure needs it anyway
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:  # a broken CUDA driver must not stop the report
        info["cuda"] = "unknown"
    return info
