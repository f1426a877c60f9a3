"""Uncertainty of a table's numbers: bootstrap confidence intervals and paired tests.

The paper reports mean ± standard deviation over test slices only. We add, per method and metric,
a percentile bootstrap interval of the mean over slices (``evaluate.bootstrap`` resamples,
``evaluate.confidence`` level, seeded) and a two-sided paired Wilcoxon signed-rank test against
``evaluate.reference_method`` on the slices both methods scored. Slices of one subject are not
independent, so both are optimistic when a subject contributes many slices; the report says so.
"""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped).

    Returns ``(nan, nan)`` for no values and ``(v, v)`` for one.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    # In blocks so B × N indices never need much memory.
    block = max(1, 2_000_000 // x.size)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def wilcoxon_p(a, b) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value of ``a`` vs ``b`` (same slices, same order).

    Pairs with a NaN are dropped. All differences zero (the same method twice) gives 1.0; no
    pairs gives NaN.
    """
    from scipy.stats import wilcoxon

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    if d.size == 0:
        return float("nan")
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(a[ok], b[ok], zero_method="wilcox", alternative="two-sided").pvalue)


def summarise(values, n_boot: int, confidence: float, seed: int) -> dict:
    """mean, std (ddof = 1, as a table's ± usually is), n and the bootstrap interval."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    lo, hi = bootstrap_ci(x, n_boot, confidence, seed)
    return {
        "n": int(x.size),
        "mean": float(x.mean()) if x.size else float("nan"),
        "std": float(x.std(ddof=1)) if x.size > 1 else (0.0 if x.size else float("nan")),
        "ci_low": lo,
        "ci_high": hi,
    }
