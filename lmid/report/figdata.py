"""What each report figure shows, computed from the loaded inputs: arrays and labels, no drawing, no HTML.

Each ``*_data`` function returns what :mod:`lmid.report.figures` draws, or raises :class:`Missing`
with the reason the figure cannot be made (the report then shows a placeholder).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lmid.evaluation.display import DISPLAY, method_order
from lmid.evaluation.metrics import read_metrics_csv

log = logging.getLogger(__name__)


class Missing(Exception):
    """A figure's inputs are absent; the message says which (shown as "Not available: <message>.")."""


# ------------------------------------------------------------------------------ slice choice
def grid_rows(translations: dict, split, k: int) -> np.ndarray:
    """Test-split indices shown in the figures: ``k`` slices every method translated, taken from the
    half with the most brain (the top and bottom of the brain say little) and spread evenly over
    the split (one per stretch of k, from its middle)."""
    common = None
    for tr in translations.values():
        idx = set(np.asarray(tr["index"]).tolist())
        common = idx if common is None else common & idx
    pool = np.array(sorted(common)) if common is not None else np.arange(len(split))
    if pool.size == 0:
        return pool
    area = split.mask[pool].sum(axis=(1, 2))
    pool = pool[area >= np.median(area)]
    k = min(k, pool.size)
    return pool[((np.arange(k) + 0.5) * pool.size / k).astype(int)]


def rows_of(tr: dict, indices: np.ndarray, key: str = "image") -> np.ndarray:
    """``tr[key]`` at the given test-split indices (translations may cover the split in any order)."""
    where = {int(i): k for k, i in enumerate(np.asarray(tr["index"]))}
    return np.stack([tr[key][where[int(i)]] for i in indices])


def available(trs: dict, order: list[str]) -> dict:
    return {m: trs[m] for m in order if m in trs}


def row_labels(split, rows) -> list[str]:
    return [f"{split.subject[i]} z={split.slice_index[i]}" for i in rows]


# ---------------------------------------------------------------------------------- figures
def translating(trs: dict) -> dict:
    """The translations of the methods that translate (a segmentation reference's 'image' is its source)."""
    from lmid.registry import METHODS

    return {m: t for m, t in trs.items() if not (m in METHODS and METHODS[m].segments)}


def grid_data(params, s: dict, split, trs: dict) -> dict:
    """Source, target and every method's translation on the grid's slices."""
    src_name = s["source_modality"]
    trs = translating(available(trs, s["method_order"]))
    if split is None or not trs:
        raise Missing("test split or translations not found")
    try:
        source = split.modality(src_name, params.data.source_modality, params.data.target_modality)
    except KeyError:
        raise Missing(f"the test split has no {src_name} slices") from None
    rows = grid_rows(trs, split, params.report.grid_slices)
    return {
        "source": source[rows],
        "target": split.target[rows],
        "translations": {m: rows_of(t, rows) for m, t in trs.items()},
        "labels": row_labels(split, rows),
        "n": len(rows),
    }


def segmentation_data(params, split, trs: dict, s_main: dict, models_dir: Path) -> dict:
    """The K-Means segmenter applied to the real target and to each translation, inside the slice's mask
    (a segmentation reference's own labels of the source, in the same mask, beside them)."""
    from lmid.evaluation.segment import KMeansSegmenter

    seg_path = models_dir / "kmeans.json"
    trs = available(trs, s_main["method_order"])
    if split is None or not trs or not seg_path.is_file():
        raise Missing("segmenter, test split or translations not found")
    seg = KMeansSegmenter.load(seg_path)
    tgt = params.data.target_modality
    rows = grid_rows(trs, split, min(params.report.grid_slices, 3))
    masks = split.mask[rows]

    def segment(images):
        return np.stack([seg.predict(x, mk) for x, mk in zip(images, masks)])

    cols = {}
    if split.has_label:
        cols["ground truth"] = (split.target[rows], split.label[rows])
    cols[f"K-Means of real {tgt}"] = (split.target[rows], segment(split.target[rows]))
    for m, t in trs.items():
        images = rows_of(t, rows)
        if "labels" in t:  # a segmentation reference: its own labels of the source, in the same mask
            labels = np.where(masks, rows_of(t, rows, "labels"), 0).astype(np.uint8)
            cols[DISPLAY.get(m, m)] = (images, labels)
        else:
            cols[DISPLAY.get(m, m)] = (images, segment(images))
    return {
        "target": split.target[rows],
        "columns": cols,
        "labels": row_labels(split, rows),
        "k": len(seg.centroids),
        "has_label": bool(split.has_label),
    }


def metrics_data(exp: str, s: dict, metrics_dir: Path) -> dict:
    """Per-slice Dice, PSNR and SSIM of each method (from its metrics CSV)."""
    gt = s["dice_key"] == "dice_gt"
    dice = ("dice_gt_mean", "Dice (vs ground truth)") if gt else ("dice_km_mean", "Dice (vs K-Means of target)")
    panels = [dice, ("psnr", "PSNR (dB)"), ("ssim", "SSIM")]
    values: dict = {key: {} for key, _ in panels}
    for m in s["method_order"]:
        csv = metrics_dir / exp / f"{m}.csv"
        if csv.is_file():
            df = read_metrics_csv(csv)
            for key, _ in panels:
                if key in df.columns:
                    values[key][m] = df[key].to_numpy(dtype=float)
    if not values[panels[0][0]]:
        raise Missing("per-slice metrics not found")
    return {"values": values, "panels": panels, "dice_gt": gt}


#: Diffusion steps of the noised rows of the LMI figure, as fractions of T (T − 1 for 1).
LMI_STEPS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def lmi_data(params, split, trs: dict) -> dict:
    """LMI maps of one test slice: source with itself, with the target, with a translation, and with
    noised targets and sources along q(x_t | x_0) (what the sampler's conditioning sees)."""
    if split is None or len(split) == 0:
        raise Missing("test split not found")
    import torch

    from lmid.diffusion.schedule import NoiseSchedule
    from lmid.lmi import local_mutual_information

    method = "lmidiffusion" if "lmidiffusion" in trs else next(iter(trs), None)
    i = int(grid_rows(trs, split, 1)[0]) if trs else 0
    s = split.source[i].astype(np.float32)
    y = split.target[i].astype(np.float32)
    schedule = NoiseSchedule(params.diffusion.schedule)
    T = schedule.T
    ts = sorted({min(int(f * T), T - 1) for f in LMI_STEPS})
    eps = np.random.default_rng(params.seed + 33).standard_normal(s.shape).astype(np.float32)

    def noised(x0, t):  # q(x_t | x_0), not clipped: the sampler feeds its x_t to the LMI as is
        return schedule.add_noise(torch.from_numpy(x0)[None], torch.from_numpy(eps)[None], torch.tensor([t]))[0].numpy()

    pairs = [(s, s), (s, y)]
    x = None
    if method is not None:
        x = rows_of(trs[method], np.array([i]))[0].astype(np.float32)
        pairs.append((s, x))
    inter = trs.get(method, {}) if method else {}
    has_inter = "intermediates" in inter and "intermediate_t" in inter
    pairs += [(s, noised(y, t)) for t in ts] + [(s, noised(s, t)) for t in ts]
    if has_inter:
        xi = rows_of(inter, np.array([i]), "intermediates")[0].astype(np.float32)
        pairs += [(s, xi[j]) for j in range(xi.shape[0])]
    lp = params.lmi
    with torch.no_grad():
        a = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
        b = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None]
        maps = local_mutual_information(a, b, mode=lp.mode, window=lp.window, bins=lp.bins, sigma=lp.sigma)
    maps = maps[:, 0].numpy()
    tgt = params.data.target_modality
    grey = ("gray", (0.0, 1.0))
    images = [("source s", s, *grey), (f"real {tgt} y", y, *grey)]
    images += [(f"{DISPLAY.get(method, method)} x", x, *grey)] if x is not None else []
    k0 = 3 if x is not None else 2
    first = [("LMI(s, s)", maps[0]), ("LMI(s, y)", maps[1])] + ([("LMI(s, x)", maps[2])] if x is not None else [])
    n_t = len(ts)
    rows = [
        ("images and LMI", images + first, "magma", None),
        (
            f"LMI(s, y_t)\ny_t = noised real {tgt}",
            [(f"t = {t}", maps[k0 + j]) for j, t in enumerate(ts)],
            "magma",
            None,
        ),
        (
            "LMI(s, s_t)\ns_t = noised source",
            [(f"t = {t}", maps[k0 + n_t + j]) for j, t in enumerate(ts)],
            "magma",
            None,
        ),
    ]
    if has_inter:
        tt = np.asarray(inter["intermediate_t"]).tolist()
        rows.append(
            (
                "LMI(s, x_t)\nsampler's own x_t",
                [(f"t = {t}", maps[k0 + 2 * n_t + j]) for j, t in enumerate(tt)],
                "magma",
                None,
            )
        )
    return {
        "rows": rows,
        "slice": f"{split.subject[i]} z={split.slice_index[i]}",
        "method": DISPLAY.get(method, method) if x is not None else "",
        "intermediates": has_inter,
    }


def loss_logs(params, models_dir: Path) -> dict:
    """Each method's train_log.csv that has losses, in the table's method order."""
    import pandas as pd

    from lmid.report.figures import loss_series

    logs = {}
    order = (
        method_order([p.parent.name for p in sorted(models_dir.glob("*/train_log.csv"))], params)
        if models_dir.is_dir()
        else []
    )
    for m in order:
        csv = models_dir / m / "train_log.csv"
        try:
            df = pd.read_csv(csv)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            log.warning("%s: unreadable (%s); left out of the loss curves", csv, err)
            continue
        if "step" in df.columns and len(df) and loss_series(df):
            logs[m] = df
    if not logs:
        raise Missing("no train_log.csv with losses")
    return logs


def uncertainty_data(params, split, trs: dict) -> dict:
    """Mean and per-pixel std over samples for the methods that drew more than one."""
    with_std = {m: t for m, t in trs.items() if "std" in t and np.any(np.asarray(t["std"]) > 0)}
    if split is None or not with_std:
        raise Missing("no method was sampled more than once per slice")
    rows = grid_rows(with_std, split, min(params.report.grid_slices, 3))
    cols = {
        DISPLAY.get(m, m): (rows_of(t, rows, "mean" if "mean" in t else "image"), rows_of(t, rows, "std"))
        for m, t in with_std.items()
    }
    return {"columns": cols, "labels": row_labels(split, rows)}


def convergence_data(diagnostics: dict | None) -> dict:
    curve = (diagnostics or {}).get("convergence") or []
    if len(curve) < 2:
        raise Missing("fewer than two training snapshots (diffusion.train.snapshot_every)")
    return {"curve": curve, "slices": diagnostics["slices"]}


def conditioning_data(diagnostics: dict | None) -> dict:
    shift = (diagnostics or {}).get("conditioning_shift")
    if not shift:
        raise Missing("no conditioning-shift measurement (lmid diagnose)")
    return {"shift": shift, "contrast": diagnostics.get("contrast_vs_dice") or {}, "slices": shift.get("slices")}


#: Rows of the baselines figure: key in the baseline samples file → row label.
BASELINE_ROWS = {
    "real": "real T1 (random)",
    "stylegan2_samples": "StyleGAN2-ADA samples",
    "sdedit_samples": "SDEdit DDPM samples",
    "cyclegan_target_to_source": "CycleGAN G_BA(T1)",
}


def baseline_rows(baselines: dict | None, images: dict | None) -> list:
    if not baselines or not images:
        raise Missing("no baseline checks (lmid check-baselines) in this run")
    return [(label, images[key]) for key, label in BASELINE_ROWS.items() if key in images]


def compute_data(diagnostics: dict | None, baselines: dict | None, models_dir: Path) -> dict:
    """Per method: CPU-hours, validation Dice and in-brain SSIM (with half-widths) at each snapshot.

    LMIDiffusion's points come from the convergence curve of ``lmid diagnose``; the baselines' from
    the snapshot curves of ``lmid check-baselines``. A snapshot without a recorded clock (written
    before one was kept) gets the training loop's wall time prorated by step, and is flagged."""
    import json

    series: dict[str, dict] = {}
    estimated: list[str] = []

    def add(method: str, points: list[tuple]) -> None:
        points = sorted(p for p in points if p[0] is not None)
        if points:
            keys = ("cpu_h", "dice", "dice_hw", "ssim", "ssim_hw")
            series[method] = {
                k: np.array([np.nan if p[i] is None else p[i] for p in points], float) for i, k in enumerate(keys)
            }

    curve = (diagnostics or {}).get("convergence") or []
    if curve:
        per_step = None
        info = Path(models_dir) / "lmidiffusion" / "train_info.json"
        if any(r.get("cpu_s") is None for r in curve) and info.is_file():
            facts = json.loads(info.read_text(encoding="utf-8"))
            if facts.get("steps") and facts.get("train_loop_wall_s"):
                per_step = float(facts["train_loop_wall_s"]) / float(facts["steps"])
                estimated.append("LMIDiffusion")
        add(
            "lmidiffusion",
            [
                (
                    (r["cpu_s"] if r.get("cpu_s") is not None else (r["step"] * per_step if per_step else None)),
                    r.get("dice_gt_mean"),
                    r.get("dice_gt_mean_half_width"),
                    r.get("ssim_mask"),
                    r.get("ssim_mask_half_width"),
                )
                for r in curve
            ],
        )
    for method, entries in ((baselines or {}).get("curves") or {}).items():
        add(
            method,
            [
                (
                    e.get("cpu_s"),
                    e["scores"]["dice_gt_mean"]["mean"],
                    e["scores"]["dice_gt_mean"]["half_width"],
                    e["scores"]["ssim_mask"]["mean"],
                    e["scores"]["ssim_mask"]["half_width"],
                )
                for e in entries
            ],
        )
    for s in series.values():
        s["cpu_h"] = s["cpu_h"] / 3600.0
    if not series:
        raise Missing("no method kept training snapshots (<method>.train.snapshot_every)")
    n = (diagnostics or {}).get("slices")
    return {"series": series, "estimated": estimated, "slices": n}
