"""Shared fixtures: the tiny preset, a CLI runner, and tiny prepared data made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "presets" / "tiny.yaml"

# Tests are small: keep torch from oversubscribing the 2 cores of a CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def run_lmid(*args, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m lmid ARGS`` and return the completed process (never raises on failure)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "lmid", *map(str, args)], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


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
