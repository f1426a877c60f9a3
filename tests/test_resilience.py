"""Interruption and resume, offline operation, retries of failed jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, run_lmid


def _train_cmd(tiny_data: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "lmid", "train", "--params", str(TINY), "--method", "lmidiffusion",
            "--train", str(tiny_data / "train.npz"), "--val", str(tiny_data / "val.npz"), "--out", str(out),
            "--set", f"diffusion.train.steps={steps}", "--set", "diffusion.train.checkpoint_every=4",
            "--device", "cpu"]


def _weights(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    flat = {}

    def walk(prefix, obj):
        if isinstance(obj, torch.Tensor):
            flat[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)

    walk("", state)
    return flat


def test_sigkill_after_first_checkpoint_then_resume_equals_uninterrupted(tmp_path, tiny_data):
    steps = 40
    ref = tmp_path / "uninterrupted"
    res = subprocess.run(_train_cmd(tiny_data, ref, steps), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_data, out, steps), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 600
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, "training ended before writing a checkpoint"
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists(), "killed before the end, yet a final model exists"

    res = subprocess.run(_train_cmd(tiny_data, out, steps), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stderr, res.stderr[-3000:]
    a, b = _weights(ref / "model.pt"), _weights(out / "model.pt")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_raising_steps_resumes_from_the_last_checkpoint(tmp_path, tiny_data):
    """Training longer (steps 8 → 12) continues from step 8 and ends where an uninterrupted
    12-step run ends; the fingerprint leaves run length out, so the checkpoint is not thrown away."""
    out = tmp_path / "longer"
    first = subprocess.run(_train_cmd(tiny_data, out, 8), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    res = subprocess.run(_train_cmd(tiny_data, out, 12), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(step 8)" in res.stderr and "starting afresh" not in res.stderr, res.stderr[-3000:]
    ref = tmp_path / "straight"
    res = subprocess.run(_train_cmd(tiny_data, ref, 12), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _weights(ref / "model.pt"), _weights(out / "model.pt")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # A change of what training learns (the learning rate) is not resumed.
    res = subprocess.run(_train_cmd(tiny_data, out, 12) + ["--set", "diffusion.train.lr=1e-3"], capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0 and "starting afresh" in res.stderr, res.stderr[-3000:]


GUARD = """
import socket, sys
def _refuse(*a, **k):
    raise RuntimeError("network access attempted at run time")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
from lmid.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_steps_run_with_networking_disabled(tmp_path):
    """generate + prepare + train + translate with every socket connection refused."""
    def run(*args):
        res = subprocess.run([sys.executable, "-c", GUARD, *map(str, args)], capture_output=True, text=True,
                             timeout=900, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-3000:]

    run("generate", "--params", TINY, "--out", tmp_path / "raw")
    run("prepare", "--params", TINY, "--raw", tmp_path / "raw", "--out", tmp_path / "slices")
    run("train", "--params", TINY, "--method", "lmidiffusion", "--train", tmp_path / "slices/train.npz",
        "--val", tmp_path / "slices/val.npz", "--out", tmp_path / "model", "--set", "diffusion.train.steps=2")
    run("translate", "--params", TINY, "--method", "lmidiffusion", "--model", tmp_path / "model/model.pt",
        "--slices", tmp_path / "slices/test.npz", "--limit", "2", "--out", tmp_path / "t.npz")
    assert (tmp_path / "t.npz").exists()
