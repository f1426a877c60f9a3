"""Shared fixtures: the tiny preset, a CLI runner, and tiny prepared data made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "presets" / "tiny.yaml"

# Tests are small: keep torch from oversubscribing the 2 cores of a CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def run_lmid(
    *args, cwd: Path | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m lmid ARGS`` and return the completed process (never raises on failure)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lmid", *map(str, args)],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks: one torch thread is faster than two fighting over a shared 2-core machine.
    Modules that train networks use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_params() -> Path:
    return TINY


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Simulated volumes and prepared slices of the tiny preset: returns the slices folder."""
    base = tmp_path_factory.mktemp("tiny")
    res = run_lmid("generate", "--params", TINY, "--out", base / "raw")
    assert res.returncode == 0, res.stderr
    res = run_lmid("prepare", "--params", TINY, "--raw", base / "raw", "--out", base / "slices")
    assert res.returncode == 0, res.stderr
    return base / "slices"


#: Side of the synthetic slices of the diffusion method tests.
SIZE = 16


def slice_set(n: int, seed: int = 0):
    """Synthetic slices whose source and target differ everywhere (source = inverted target +
    offset), for the LMIDiffusion and SDEdit tests."""
    from lmid.data.slices import SliceSet

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    target = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(5, 11, 2)
        target[i] = 0.2 + 0.6 * ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(9, 25))
    target += rng.uniform(0, 0.05, target.shape).astype(np.float32)
    source = (1.0 - target) * 0.7 + 0.1
    return SliceSet(
        source=source,
        target=target,
        mask=np.ones_like(target, bool),
        label=np.zeros(target.shape, np.uint8),
        subject=np.array([f"S{i // 2}" for i in range(n)]),
        slice_index=np.arange(n),
        has_label=False,
    )
