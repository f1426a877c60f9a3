"""``lmid check-baselines``: the histogram distance that tells a trained generator from a blob."""

from __future__ import annotations

import numpy as np
import pytest

from lmid.evaluation.baselines import FOREGROUND, foreground_stats


def _brain(rng, n=6, size=32):
    """Discs of three tissue intensities, like a crude T1 (CSF < GM < WM)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    img = np.where(r < 13, 0.2, 0.0) + np.where(r < 10, 0.4, 0.0) + np.where(r < 6, 0.25, 0.0)
    return np.clip(img[None] + rng.normal(0, 0.01, (n, size, size)), 0, 1).astype(np.float32)


def test_w1_is_the_brute_force_sorted_difference():
    rng = np.random.default_rng(0)
    a, b = _brain(rng), _brain(rng) * 0.9
    fa, fb = a[a > FOREGROUND], b[b > FOREGROUND]
    # 1-Wasserstein between two empirical distributions = area between their quantile functions.
    q = np.linspace(0, 1, 20001)[1:-1]
    brute = np.mean(np.abs(np.quantile(fa, q, method="inverted_cdf") - np.quantile(fb, q, method="inverted_cdf")))
    assert foreground_stats(b, a)["w1_to_real"] == pytest.approx(brute, abs=2e-4)
    assert foreground_stats(a, a)["w1_to_real"] == 0.0


def test_a_white_disc_is_far_from_real_slices_and_a_brain_is_not():
    rng = np.random.default_rng(1)
    real = _brain(rng)
    yy, xx = np.mgrid[:32, :32]
    disc = np.repeat((np.hypot(yy - 16, xx - 16) < 13).astype(np.float32)[None], 6, axis=0)
    s_disc = foreground_stats(disc, real)
    s_brain = foreground_stats(_brain(rng), real)
    fg = real[real > FOREGROUND]
    assert s_disc["saturated_fraction"] == 1.0
    assert s_disc["w1_to_real"] == pytest.approx(float(np.mean(1.0 - fg)), abs=1e-4)  # all mass moved to 1
    assert s_brain["w1_to_real"] < 0.01 < s_disc["w1_to_real"]
    assert s_disc["foreground_fraction"] == pytest.approx(s_brain["foreground_fraction"], abs=0.02)  # same size
