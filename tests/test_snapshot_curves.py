"""Quality against training compute: the training clock, GAN snapshots, their curves, the
StyleGAN2 projector's intensity-distribution term and the compute-matched figure's data."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from lmid.checkpoint import load_checkpoint
from lmid.clock import TrainClock
from lmid.methods.stylegan2_distances import HIST_BINS, HIST_RANGE, histogram_w1, intensity_histogram
from conftest import TINY, run_lmid


def test_the_clock_continues_where_the_checkpoint_left_it():
    clock = TrainClock.resumed({"wall_s": 100.0, "cpu_s": 40.0})
    # Burn a little CPU and wall time: process time counts every thread of the process, so with
    # other threads busy it can run ahead of the wall clock; wait for both.
    cpu_end, wall_end = time.process_time() + 0.05, time.perf_counter() + 0.05
    while time.process_time() < cpu_end or time.perf_counter() < wall_end:
        pass
    state = clock.state()
    assert state["wall_s"] >= 100.05 - 1e-3 and state["cpu_s"] >= 40.05 - 1e-3
    assert state["cpu_s"] < 40.0 + 5.0  # only this process's few CPU-ms were added
    assert TrainClock.resumed(None).state()["cpu_s"] < 5.0
    assert clock.this_run() < 5.0


def _reference(values: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(values, dtype=torch.float32).reshape(1, -1)
    return intensity_histogram(x, torch.ones_like(x))[0]


def test_histogram_w1_of_a_shift_is_the_shift():
    """For a pure shift the CDFs never cross, so the smoothing (the same kernel on both sides)
    leaves W1 equal to the shift; the brute-force value is the mean sorted difference."""
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.2, 0.6, 20000)
    img = torch.as_tensor(
        rng.uniform(0.2, 0.6, (2, 1, 64, 64)) + np.array([0.0, 0.25])[:, None, None, None], dtype=torch.float32
    )
    w1 = histogram_w1(img, torch.ones_like(img, dtype=torch.bool), _reference(ref)).numpy()
    brute = [
        np.mean(np.abs(np.sort(img[k].flatten().numpy()) - np.quantile(ref, (np.arange(4096) + 0.5) / 4096)))
        for k in range(2)
    ]
    bin_width = (HIST_RANGE[1] - HIST_RANGE[0]) / (HIST_BINS - 1)
    assert w1[0] == pytest.approx(brute[0], abs=bin_width / 2)
    assert w1[1] == pytest.approx(0.25, abs=bin_width / 2) and w1[1] == pytest.approx(brute[1], abs=bin_width / 2)


def test_histogram_term_ignores_pixels_outside_the_mask_and_pulls_white_down():
    ref = _reference(np.full(1000, 0.5))
    img = torch.full((1, 1, 8, 8), 0.5)
    img[0, 0, :, :4] = 1.0  # saturated half
    mask = torch.zeros_like(img, dtype=torch.bool)
    mask[0, 0, :, 4:] = True
    assert float(histogram_w1(img, mask, ref)) == pytest.approx(0.0, abs=1e-6)  # the white half is outside
    img.requires_grad_(True)
    w1 = histogram_w1(img, torch.ones_like(mask), ref)
    assert float(w1.detach()) == pytest.approx(0.25, abs=0.02)  # half the mass moved by 0.5
    (grad,) = torch.autograd.grad(w1.sum(), img)
    assert (grad[0, 0, :, :4] > 0).all()  # a descent step lowers the saturated pixels (beyond 1, too)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """CycleGAN and StyleGAN2 of the tiny preset with snapshots every 3 of 6 steps, and the K-Means segmenter."""
    models = tmp_path_factory.mktemp("models")
    for method in ("cyclegan", "stylegan2"):
        res = run_lmid(
            "train",
            "--params",
            TINY,
            "--method",
            method,
            "--train",
            tiny_data / "train.npz",
            "--val",
            tiny_data / "val.npz",
            "--out",
            models / method,
            "--set",
            f"{method}.train.snapshot_every=3",
        )
        assert res.returncode == 0, res.stderr
    res = run_lmid(
        "fit-segmenter", "--params", TINY, "--train", tiny_data / "train.npz", "--out", models / "kmeans.json"
    )
    assert res.returncode == 0, res.stderr
    return models


def test_gan_snapshots_carry_the_clock_and_the_last_is_the_model(trained):
    for method, weights in (("cyclegan", "generator"), ("stylegan2", "g_ema")):
        snaps = sorted((trained / method / "snapshots").glob("step*.pt"))
        assert [p.name for p in snaps] == ["step0000003.pt", "step0000006.pt"]
        metas = [load_checkpoint(p)["meta"] for p in snaps]
        assert [m["step"] for m in metas] == [3, 6]
        assert 0 < metas[0]["cpu_s"] < metas[1]["cpu_s"] and 0 < metas[0]["wall_s"] < metas[1]["wall_s"]
        final, last = load_checkpoint(trained / method / "model.pt"), load_checkpoint(snaps[-1])
        for key, value in final[weights].items():
            assert torch.equal(value, last[weights][key]), (method, key)
    assert "target_histogram" in load_checkpoint(trained / "stylegan2" / "model.pt")


def test_check_baselines_scores_every_snapshot(trained, tiny_data, tmp_path):
    out, images = tmp_path / "baselines.json", tmp_path / "samples.npz"
    args = [
        "check-baselines",
        "--params",
        TINY,
        "--models",
        trained / "cyclegan" / "model.pt",
        trained / "stylegan2" / "model.pt",
        "--test",
        tiny_data / "test.npz",
        "--val",
        tiny_data / "val.npz",
        "--segmenter",
        trained / "kmeans.json",
        "--samples",
        "4",
        "--out",
        out,
        "--images",
        images,
    ]
    res = run_lmid(*args)
    assert res.returncode == 0, res.stderr
    curves = json.loads(out.read_text())["curves"]
    assert sorted(curves) == ["cyclegan", "stylegan2"]
    for method, curve in curves.items():
        assert [e["step"] for e in curve] == [3, 6]
        assert curve[0]["cpu_s"] < curve[1]["cpu_s"]
        for e in curve:
            assert 0.0 <= e["scores"]["dice_gt_mean"]["mean"] <= 1.0
            assert np.isfinite(e["scores"]["ssim_mask"]["mean"])
    assert all(np.isfinite(e["checks"]["psnr_mask_cycle_source"]) for e in curves["cyclegan"])
    sty = curves["stylegan2"][-1]["checks"]
    assert 0.0 <= sty["inversion_saturated"] <= 1.0 and sty["samples_w1"] > 0
    # Cached beside each snapshot: a second run reads the same numbers back.
    assert len(list((trained / "cyclegan" / "snapshots").glob("*.scores-*.json"))) == 2
    res = run_lmid(*args)
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["curves"] == curves
    res = run_lmid(*args[:-8], "--out", out, "--images", images)  # --val without --segmenter
    assert res.returncode != 0 and "--segmenter" in res.stderr


def test_compute_data_prorates_snapshots_without_a_clock(tmp_path):
    from lmid.report.figdata import compute_data

    (tmp_path / "lmidiffusion").mkdir()
    (tmp_path / "lmidiffusion" / "train_info.json").write_text(json.dumps({"steps": 100, "train_loop_wall_s": 360.0}))
    diagnostics = {
        "slices": 5,
        "convergence": [
            {
                "step": 50,
                "dice_gt_mean": 0.5,
                "dice_gt_mean_half_width": 0.1,
                "ssim_mask": 0.6,
                "ssim_mask_half_width": 0.1,
            },
            {
                "step": 100,
                "dice_gt_mean": 0.6,
                "dice_gt_mean_half_width": 0.1,
                "ssim_mask": 0.7,
                "ssim_mask_half_width": None,
            },
        ],
    }
    entry = {
        "step": 10,
        "cpu_s": 7200.0,
        "scores": {"dice_gt_mean": {"mean": 0.4, "half_width": 0.05}, "ssim_mask": {"mean": 0.5, "half_width": 0.05}},
    }
    d = compute_data(diagnostics, {"curves": {"cyclegan": [entry]}}, tmp_path)
    assert d["estimated"] == ["LMIDiffusion"]
    np.testing.assert_allclose(d["series"]["lmidiffusion"]["cpu_h"], [0.05, 0.1])
    np.testing.assert_allclose(d["series"]["cyclegan"]["cpu_h"], [2.0])
    assert np.isnan(d["series"]["lmidiffusion"]["ssim_hw"][1])
    diagnostics["convergence"][0]["cpu_s"] = diagnostics["convergence"][1]["cpu_s"] = 36.0
    assert compute_data(diagnostics, None, tmp_path)["estimated"] == []
