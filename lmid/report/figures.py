"""The report's figures (matplotlib, Agg backend, PNG).

Every function takes arrays (no file reading here, so tests can call them on synthetic data),
writes one PNG atomically and returns its path. PNGs carry no software/time stamp, so the same
inputs give the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from lmid.io import atomic_path  # noqa: E402
from lmid.registry import METHODS  # noqa: E402

DPI = 110
#: One colour per method, the same in every figure (lmid/registry.py).
COLOURS = {name: spec.colour for name, spec in METHODS.items()}
#: Overlay colours of the tissue labels 1 CSF, 2 GM, 3 WM.
TISSUE_COLOURS = {1: ("CSF", "#3498db"), 2: ("GM", "#f39c12"), 3: ("WM", "#e74c3c")}

plt.rcParams.update(
    {
        "font.size": 9,
        "axes.titlesize": 9,
        "axes.labelsize": 9,
        "figure.facecolor": "white",
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.hashsalt": "lmid",
    }
)


def colour(method: str, k: int = 0) -> str:
    return COLOURS.get(method, plt.get_cmap("tab10")(k % 10))


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return path


def _image_axis(ax, img, title: str | None = None, cmap: str = "gray", vmin=0.0, vmax=1.0):
    im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)
    return im


def placeholder(path, title: str, message: str) -> Path:
    """A small figure that says why the real one could not be drawn."""
    fig = plt.figure(figsize=(5.0, 1.2))
    fig.text(0.5, 0.62, title, ha="center", va="center", fontsize=10, weight="bold")
    fig.text(0.5, 0.3, message, ha="center", va="center", fontsize=9, color="#8a6d1b")
    return save(fig, path)


# ------------------------------------------------------------------------------- qualitative
def qualitative_grid(
    path,
    source: np.ndarray,
    target: np.ndarray,
    translations: dict[str, np.ndarray],
    titles: dict[str, str],
    row_labels: list[str],
    source_name: str,
    target_name: str,
) -> Path:
    """Rows: slices; columns: source, every method, real target (all on [0, 1])."""
    k = source.shape[0]
    cols = [(f"source ({source_name})", source)] + [(titles.get(m, m), img) for m, img in translations.items()]
    cols.append((f"real {target_name}", target))
    n = len(cols)
    fig, axes = plt.subplots(k, n, figsize=(1.45 * n, 1.5 * k + 0.35), squeeze=False)
    for r in range(k):
        for c, (title, imgs) in enumerate(cols):
            _image_axis(axes[r, c], imgs[r], title if r == 0 else None)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    fig.subplots_adjust(wspace=0.03, hspace=0.05)
    return save(fig, path)


def segmentation_overlays(
    path, target: np.ndarray, columns: dict[str, tuple[np.ndarray, np.ndarray]], row_labels: list[str]
) -> Path:
    """Each column: (background image, label map) per row; labels drawn translucent on the image."""
    k = target.shape[0]
    n = len(columns)
    cmap = ListedColormap([(0, 0, 0, 0)] + [TISSUE_COLOURS[i][1] for i in (1, 2, 3)])
    fig, axes = plt.subplots(k, n, figsize=(1.45 * n, 1.5 * k + 0.6), squeeze=False)
    for c, (title, (imgs, labels)) in enumerate(columns.items()):
        for r in range(k):
            ax = axes[r, c]
            _image_axis(ax, imgs[r], title if r == 0 else None)
            ax.imshow(np.ma.masked_equal(labels[r], 0), cmap=cmap, vmin=0, vmax=3, alpha=0.55, interpolation="nearest")
    for r in range(k):
        axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    handles = [Patch(color=col, label=name) for name, col in TISSUE_COLOURS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, -0.01))
    fig.subplots_adjust(wspace=0.03, hspace=0.05, bottom=0.08)
    return save(fig, path)


# ---------------------------------------------------------------------------- distributions
def metric_distributions(
    path,
    values: dict[str, dict[str, np.ndarray]],
    titles: dict[str, str],
    metrics: list[tuple[str, str]],
    seed: int = 0,
) -> Path:
    """One panel per metric: a box per method with the per-slice values as jittered points.

    ``values[metric][method]`` holds the per-slice numbers; ``metrics`` is [(key, label)].
    """
    rng = np.random.default_rng(seed)
    methods = list(next(iter(values.values())).keys()) if values else []
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        data = [np.asarray(values[key].get(m, []), dtype=float) for m in methods]
        data = [d[np.isfinite(d)] for d in data]
        pos = np.arange(1, len(methods) + 1)
        ax.boxplot(
            [d if d.size else [np.nan] for d in data],
            positions=pos,
            widths=0.55,
            showfliers=False,
            medianprops={"color": "black"},
            boxprops={"color": "#555"},
            whiskerprops={"color": "#555"},
            capprops={"color": "#555"},
        )
        for k, (m, d) in enumerate(zip(methods, data)):
            ax.scatter(
                pos[k] + rng.uniform(-0.18, 0.18, d.size),
                d,
                s=9,
                color=colour(m, k),
                alpha=0.75,
                linewidths=0,
                zorder=3,
            )
        ax.set_xticks(pos)
        ax.set_xticklabels([titles.get(m, m) for m in methods], rotation=35, ha="right", fontsize=8)
        ax.set_title(label)
        ax.grid(axis="y", color="#e5e5e5", linewidth=0.6)
        ax.set_axisbelow(True)
    fig.tight_layout()
    return save(fig, path)


# ----------------------------------------------------------------------------------- LMI maps
def lmi_maps(path, rows: list[tuple[str, list[tuple], str, tuple[float, float] | None]]) -> Path:
    """Rows of maps: (row title, panels, colormap, (vmin, vmax) or None for auto).

    A panel is ``(title, image)`` drawn with the row's colormap and scale, or
    ``(title, image, cmap, (vmin, vmax))`` drawn with its own (e.g. a grey image beside LMI maps).
    Each row gets one colour bar for the panels that use the row's colormap.
    """
    n = max(len(panels) for _, panels, _, _ in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.55 * n + 0.7, 1.75 * len(rows)), squeeze=False)
    for r, (row_title, panels, cmap, lim) in enumerate(rows):
        own = [p for p in panels if len(p) == 2]
        if lim is None:
            vals = np.concatenate([np.ravel(p[1]) for p in own]) if own else np.zeros(1)
            lim = (0.0, max(float(np.nanmax(vals)), 1e-6))
        im = None
        for c in range(n):
            ax = axes[r, c]
            if c >= len(panels):
                ax.axis("off")
            elif len(panels[c]) == 2:
                im = _image_axis(ax, panels[c][1], panels[c][0], cmap=cmap, vmin=lim[0], vmax=lim[1])
            else:
                title, img, pcmap, plim = panels[c]
                _image_axis(ax, img, title, cmap=pcmap, vmin=plim[0], vmax=plim[1])
        axes[r, 0].set_ylabel(row_title, fontsize=7.5)
        if im is not None:
            cb = fig.colorbar(im, ax=list(axes[r]), fraction=0.012, pad=0.01)
            cb.ax.tick_params(labelsize=7)
    return save(fig, path)


# ---------------------------------------------------------------------------------- training
def loss_curves(path, logs: dict[str, "pd.DataFrame"], titles: dict[str, str]) -> Path:  # noqa: F821
    """One panel per method: every loss column against step (per stage when there is one)."""
    n = len(logs)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.9 * cols, 2.7 * nrows), squeeze=False)
    for ax, (method, df) in zip(axes.ravel(), logs.items()):
        series = loss_series(df)
        for k, (name, x, y) in enumerate(series):
            col = plt.get_cmap("tab10")(k % 10)
            ax.plot(x, y, color=col, alpha=0.25, linewidth=0.8)
            ax.plot(x, _smooth(y), color=col, linewidth=1.4, label=name)
        positive = all(np.all(y[np.isfinite(y)] > 0) for _, _, y in series) and series
        if positive:
            lo = min(np.nanmin(y) for _, _, y in series)
            hi = max(np.nanmax(y) for _, _, y in series)
            if hi > 20 * lo:
                ax.set_yscale("log")
        ax.set_title(titles.get(method, method))
        ax.set_xlabel("step")
        ax.grid(color="#ececec", linewidth=0.6)
        if series:
            ax.legend(fontsize=7, frameon=False, ncol=2 if len(series) > 3 else 1)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    return save(fig, path)


#: Columns of a train_log.csv that are not losses.
NOT_LOSSES = {"step", "stage", "epoch", "lr", "time", "wall_s", "elapsed_s", "p", "ada_p", "kimg"}


def loss_series(df) -> list[tuple[str, np.ndarray, np.ndarray]]:
    import pandas as pd

    out = []
    if "step" not in df.columns:
        return out
    value_cols = [c for c in df.columns if c not in NOT_LOSSES and pd.api.types.is_numeric_dtype(df[c])]
    groups = [(None, df)] if "stage" not in df.columns else list(df.groupby("stage", sort=False))
    for stage, part in groups:
        for c in value_cols:
            y = part[c].to_numpy(dtype=float)
            ok = np.isfinite(y)
            if ok.sum() == 0:
                continue
            name = c if stage is None else f"{stage}: {c}"
            out.append((name, part["step"].to_numpy(dtype=float)[ok], y[ok]))
    return out


def _smooth(y: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """Exponential moving average whose span is a fraction of the curve (raw is drawn faintly)."""
    if y.size < 5:
        return y
    alpha = min(1.0, 2.0 / (max(2.0, frac * y.size) + 1.0))
    out = np.empty_like(y)
    acc = y[0]
    for i, v in enumerate(y):
        acc = alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


# ------------------------------------------------------------------------------- uncertainty
def uncertainty_maps(path, columns: dict[str, tuple[np.ndarray, np.ndarray]], row_labels: list[str]) -> Path:
    """Per method two columns: the mean translation and its per-pixel std over samples."""
    k = len(row_labels)
    n = 2 * len(columns)
    vmax = max(float(np.max(std)) for _, std in columns.values()) or 1.0
    fig, axes = plt.subplots(k, n, figsize=(1.5 * n + 0.6, 1.5 * k + 0.35), squeeze=False)
    im = None
    for j, (title, (mean, std)) in enumerate(columns.items()):
        for r in range(k):
            _image_axis(axes[r, 2 * j], mean[r], f"{title}: mean" if r == 0 else None)
            im = _image_axis(
                axes[r, 2 * j + 1], std[r], f"{title}: std" if r == 0 else None, cmap="viridis", vmin=0.0, vmax=vmax
            )
    for r in range(k):
        axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    if im is not None:
        cb = fig.colorbar(im, ax=list(axes.ravel()), fraction=0.015, pad=0.01)
        cb.set_label("std over samples", fontsize=7)
    return save(fig, path)


# ---------------------------------------------------------------------------------- sampler
def sampler_tradeoff(path, settings: list[dict]) -> Path:
    """Quality against time per slice for each sampler setting (mean ± std over slices)."""
    panels = [("dice", "Dice"), ("psnr", "PSNR (dB)"), ("ssim", "SSIM")]
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 2.9), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for k, s in enumerate(settings):
            x = s.get("wall_s_per_slice") or float("nan")
            st = s[key]
            mark = "o" if s["kind"] == "ddim" else "s"
            ax.errorbar(
                x,
                st["mean"],
                yerr=st["std"] or 0.0,
                fmt=mark,
                color=plt.get_cmap("tab10")(k % 10),
                capsize=2,
                markersize=5,
            )
            ax.annotate(s["setting"], (x, st["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        xs = [s.get("wall_s_per_slice") for s in settings if s.get("wall_s_per_slice")]
        if xs and max(xs) > 5 * min(xs):
            ax.set_xscale("log")
        ax.set_xlabel("seconds per slice")
        ax.set_title(label)
        ax.grid(color="#ececec", linewidth=0.6)
    fig.tight_layout()
    return save(fig, path)


def convergence_curve(path, curve: list[dict]) -> Path:
    """Validation scores of LMIDiffusion at each training snapshot (one panel per score), with the
    subject-level interval as a band where the curve has one, and the oracle's Dice dashed."""
    panels = [
        (
            ("dice_gt_mean", "vs ground truth"),
            ("dice_km_mean", "vs K-Means of real T1"),
            ("oracle_dice_gt_mean", "oracle, vs ground truth"),
        ),
        "Dice",
        (("ssim", "whole slice"), ("ssim_mask", "in brain")),
        "SSIM",
        (("psnr", "whole slice"), ("psnr_mask", "in brain")),
        "PSNR (dB)",
        (("contrast_wm_gm", "WM−GM"), ("contrast_gm_csf", "GM−CSF")),
        "contrast (× real)",
    ]
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.9), squeeze=False)
    steps = np.array([r["step"] for r in curve], dtype=float)

    def series(key):
        return np.array([np.nan if r.get(key) is None else r[key] for r in curve], dtype=float)

    for ax, lines, title in zip(axes[0], panels[0::2], panels[1::2]):
        for key, label in lines:
            y = series(key)
            if not np.isfinite(y).any():
                continue
            style = "--" if key.startswith("oracle_") else "-"
            (line,) = ax.plot(steps, y, style, marker="o", markersize=3, linewidth=1.2, label=label)
            half = series(f"{key}_half_width")
            if np.isfinite(half).any() and not key.startswith("oracle_"):
                ax.fill_between(steps, y - half, y + half, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(color="#ececec", linewidth=0.6)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return save(fig, path)


def compute_curves(path, series: dict[str, dict], titles: dict[str, str]) -> Path:
    """Validation Dice and in-brain SSIM against training CPU-hours, one line per method, with
    the subject-level interval as a band."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.1), squeeze=False)
    for k, (method, s) in enumerate(series.items()):
        for ax, key in zip(axes[0], ("dice", "ssim")):
            (line,) = ax.plot(
                s["cpu_h"],
                s[key],
                marker="o",
                markersize=3,
                linewidth=1.2,
                color=colour(method, k),
                label=titles.get(method, method),
            )
            half = s[f"{key}_hw"]
            if np.isfinite(half).any():
                ax.fill_between(
                    s["cpu_h"], s[key] - half, s[key] + half, color=line.get_color(), alpha=0.12, linewidth=0
                )
    for ax, label in zip(axes[0], ("Dice (validation)", "in-brain SSIM (validation)")):
        ax.set_xlabel("training CPU-hours")
        ax.set_ylabel(label)
        ax.grid(color="#ececec", linewidth=0.6)
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return save(fig, path)


def conditioning_shift(path, shift: dict, contrast: dict) -> Path:
    """Left: in-brain LMI quantiles (5-95 % whiskers, 25-75 % box, median) of training's maps and
    of each source's at translation. Right: per-slice Dice against the source's tissue contrast."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), squeeze=False, gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0, 0]
    groups = [("training", shift.get("training", {}))] + list(shift.get("sources", {}).items())
    labels, pos = [], 0.0
    for name, entry in groups:
        for kind, colour in (("self", "#1f77b4"), ("low_t", "#d62728")):
            q = (entry.get(kind) or {}).get("quantiles") or {}
            if not q:
                continue
            ax.plot([pos, pos], [q["q05"], q["q95"]], color=colour, linewidth=1)
            ax.add_patch(
                plt.Rectangle(
                    (pos - 0.3, q["q25"]), 0.6, q["q75"] - q["q25"], facecolor=colour, alpha=0.35, edgecolor=colour
                )
            )
            ax.plot([pos - 0.3, pos + 0.3], [q["q50"]] * 2, color=colour, linewidth=1.5)
            pos += 1.0
        labels.append((pos - 1.5, name))
        pos += 0.6
    ax.set_xticks([p for p, _ in labels], [n for _, n in labels], fontsize=7, rotation=20)
    ax.set_ylabel("LMI in the brain")
    t_max = shift.get("t_max", "")
    ax.set_title(f"blue: LMI(s, s) · red: LMI(s, x_t), t ≤ {t_max} (training: x_0 as s)", fontsize=8)
    ax.grid(color="#ececec", linewidth=0.6)
    ax = axes[0, 1]
    for name, d in contrast.items():
        ax.scatter(d["source_contrast"], d["dice"], s=10, label=name, alpha=0.8)
    ax.set_xlabel("source tissue contrast (|WM−GM| + |GM−CSF|)")
    ax.set_ylabel("Dice of the translation")
    ax.grid(color="#ececec", linewidth=0.6)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return save(fig, path)


def sample_rows(path, rows: list[tuple[str, np.ndarray]], per_row: int = 8) -> Path:
    """One row of images per label (e.g. real slices, a generator's random samples), on [0, 1]."""
    n = min(per_row, max(len(imgs) for _, imgs in rows))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.3 * len(rows) + 0.2), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            if c < len(imgs):
                _image_axis(axes[r, c], imgs[c])
            else:
                axes[r, c].axis("off")
        axes[r, 0].set_ylabel(label, fontsize=7)
    fig.subplots_adjust(wspace=0.03, hspace=0.08)
    return save(fig, path)
