"""Interruption and resume, offline operation, retries of failed jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import ROOT, TINY


#: A smaller U-Net and LMI than the tiny preset's: these tests are about stopping and resuming, so
#: the steps only have to be cheap (a process start costs more than all its steps now).
SMALL = [
    "--set",
    "diffusion.unet={channels: [8, 16], attention_levels: [false, true], num_res_blocks: 1, "
    "num_head_channels: 8, norm_num_groups: 4, dropout: 0.0}",
    "--set",
    "lmi.bins=8",
    "--set",
    "diffusion.train.snapshot_every=0",
]
#: One torch thread per training process: two threads on a shared 2-core machine wait on each other.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train_cmd(tiny_data: Path, out: Path, steps: int) -> list[str]:
    # Log rows of 3 steps and checkpoints every 4: a checkpoint falls inside a row of the log.
    return [
        sys.executable,
        "-m",
        "lmid",
        "train",
        "--params",
        str(TINY),
        "--method",
        "lmidiffusion",
        "--train",
        str(tiny_data / "train.npz"),
        "--val",
        str(tiny_data / "val.npz"),
        "--out",
        str(out),
        "--set",
        f"diffusion.train.steps={steps}",
        "--set",
        "diffusion.train.checkpoint_every=4",
        "--set",
        "diffusion.train.log_every=3",
        *SMALL,
        "--device",
        "cpu",
    ]


def _train(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


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
    """kill -9 right after the first checkpoint (step 4, inside the log row of steps 4-6), then the
    same command: the weights, the loss log and the final loss are those of an uninterrupted run."""
    import json

    steps = 24
    ref = tmp_path / "uninterrupted"
    _train(_train_cmd(tiny_data, ref, steps))

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(tiny_data, out, steps),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=ONE_THREAD,
    )
    deadline = time.time() + 600
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, "training ended before writing a checkpoint"
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists(), "killed before the end, yet a final model exists"

    res = _train(_train_cmd(tiny_data, out, steps))
    assert "resuming from" in res.stderr, res.stderr[-3000:]
    a, b = _weights(ref / "model.pt"), _weights(out / "model.pt")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (ref / "train_log.csv").read_text() == (out / "train_log.csv").read_text()
    info = [json.loads((d / "train_info.json").read_text()) for d in (ref, out)]
    assert info[0]["final_loss"] == info[1]["final_loss"] is not None


def test_raising_steps_resumes_from_the_last_checkpoint(tmp_path, tiny_data):
    """Training longer (steps 8 → 10) continues from step 8 and ends where an uninterrupted
    10-step run ends, loss log included (its row of steps 7-9 spans the two runs); the fingerprint
    leaves run length out, so the checkpoint is not thrown away."""
    out = tmp_path / "longer"
    _train(_train_cmd(tiny_data, out, 8))
    res = _train(_train_cmd(tiny_data, out, 10))
    assert "(step 8)" in res.stderr and "starting afresh" not in res.stderr, res.stderr[-3000:]
    ref = tmp_path / "straight"
    _train(_train_cmd(tiny_data, ref, 10))
    a, b = _weights(ref / "model.pt"), _weights(out / "model.pt")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (ref / "train_log.csv").read_text() == (out / "train_log.csv").read_text()
    # A change of what training learns (the learning rate) is not resumed.
    res = _train(_train_cmd(tiny_data, out, 10) + ["--set", "diffusion.train.lr=1e-3"])
    assert "starting afresh" in res.stderr, res.stderr[-3000:]


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
        res = subprocess.run(
            [sys.executable, "-c", GUARD, *map(str, args)], capture_output=True, text=True, timeout=900, cwd=ROOT
        )
        assert res.returncode == 0, res.stderr[-3000:]

    run("generate", "--params", TINY, "--out", tmp_path / "raw")
    run("prepare", "--params", TINY, "--raw", tmp_path / "raw", "--out", tmp_path / "slices")
    run(
        "train",
        "--params",
        TINY,
        "--method",
        "lmidiffusion",
        "--train",
        tmp_path / "slices/train.npz",
        "--val",
        tmp_path / "slices/val.npz",
        "--out",
        tmp_path / "model",
        "--set",
        "diffusion.train.steps=2",
    )
    run(
        "translate",
        "--params",
        TINY,
        "--method",
        "lmidiffusion",
        "--model",
        tmp_path / "model/model.pt",
        "--slices",
        tmp_path / "slices/test.npz",
        "--limit",
        "2",
        "--out",
        tmp_path / "t.npz",
    )
    assert (tmp_path / "t.npz").exists()
