"""Uncertainty of a table's numbers: bootstrap confidence intervals and paired tests.

The paper reports mean ± standard deviation over test slices only. We add, per method and metric,
a percentile bootstrap interval of the mean (``evaluate.bootstrap`` resamples, ``evaluate.confidence``
level, seeded) and a two-sided paired Wilcoxon signed-rank test against ``evaluate.reference_method``
on the slices both methods scored.

Slices of one subject are not independent (same anatomy, same bias field, same noise draw of the
scanner), so resampling slices overstates certainty. When the subject of each slice is known the
interval comes from a subject-level (cluster) bootstrap: whole subjects are drawn with replacement
and the mean is taken over all their slices. The paired test stays over slices; the report says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def bootstrap_ci(
    values, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0, groups=None
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped).

    ``groups`` (one label per value, e.g. the subject) switches to the cluster bootstrap: groups are
    resampled with replacement and each draw's mean is taken over every value of the drawn groups.
    With one value per group this is the plain bootstrap, draw for draw. Returns ``(nan, nan)`` for
    no values and ``(m, m)`` when there is one value or one group.
    """
    x = np.asarray(values, dtype=np.float64)
    if groups is None:
        labels = np.arange(x.size)
    else:
        labels = np.asarray(groups)
        if labels.shape != x.shape:
            raise ValueError(f"groups has shape {labels.shape}, values {x.shape}")
    ok = np.isfinite(x)
    x, labels = x[ok], labels[ok]
    if x.size == 0:
        return float("nan"), float("nan")
    # Per-group sums and counts: a draw's mean is sum(sums[idx]) / sum(counts[idx]).
    # Groups numbered in order of appearance, so one value per group gives the plain bootstrap's draws.
    inverse = pd.factorize(labels)[0]
    sums = np.bincount(inverse, weights=x)
    counts = np.bincount(inverse).astype(np.float64)
    g = sums.size
    if g == 1:
        m = float(x.mean())
        return m, m
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    # In blocks so B × G indices never need much memory.
    block = max(1, 2_000_000 // g)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, g, size=(stop - start, g))
        means[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
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


def summarise(values, n_boot: int, confidence: float, seed: int, groups=None) -> dict:
    """mean, std (ddof = 1, as a table's ± usually is), n, n_groups and the bootstrap interval.

    The interval resamples ``groups`` (subjects) when given, slices otherwise.
    """
    x = np.asarray(values, dtype=np.float64)
    if groups is not None and len(groups) != x.size:
        raise ValueError(f"groups has {len(groups)} labels for {x.size} values")
    ok = np.isfinite(x)
    labels = None if groups is None else np.asarray(groups)[ok]
    x = x[ok]
    lo, hi = bootstrap_ci(x, n_boot, confidence, seed, groups=labels)
    return {
        "n": int(x.size),
        "n_groups": int(np.unique(labels).size) if labels is not None else int(x.size),
        "mean": float(x.mean()) if x.size else float("nan"),
        "std": float(x.std(ddof=1)) if x.size > 1 else (0.0 if x.size else float("nan")),
        "ci_low": lo,
        "ci_high": hi,
    }
