"""The statistics behind ``lmid aggregate``'s tables: per-slice score frames → summary entries.

Per experiment and method every metric's mean/std/bootstrap CI (lmid/evaluation/stats.py) and its
paired Wilcoxon p against the reference method; the sampler table, SDEdit's t0 sweep, the change
on the unseen protocol, timings and the DVC metrics. Numbers only: lmid/evaluation/tables.py
renders them.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np

from lmid.config import SAMPLER_SETTING, SAMPLER_SETTING_HELP, parse_sampler_setting
from lmid.evaluation.display import COMPETITORS
from lmid.evaluation.metrics import read_metrics_csv
from lmid.evaluation.stats import summarise, wilcoxon_p
from lmid.experiments import unseen_experiment

log = logging.getLogger(__name__)


#: Every per-slice column summarised (summary key → CSV column).
SUMMARY_COLUMNS = {
    "dice_gt": "dice_gt_mean",
    "dice_km": "dice_km_mean",
    "psnr": "psnr",
    "ssim": "ssim",
    "psnr_mask": "psnr_mask",
    "ssim_mask": "ssim_mask",
    "dice_gt_csf": "dice_gt_csf",
    "dice_gt_gm": "dice_gt_gm",
    "dice_gt_wm": "dice_gt_wm",
    "dice_km_csf": "dice_km_csf",
    "dice_km_gm": "dice_km_gm",
    "dice_km_wm": "dice_km_wm",
    "contrast_wm_gm": "contrast_wm_gm",
    "contrast_gm_csf": "contrast_gm_csf",
    "tissue_order": "tissue_order",
    "dice_ceiling": "dice_ceiling",
}
#: What the sampler table summarises per setting (Dice against the split's best reference).
SAMPLER_SCORES = ("dice", "psnr", "ssim", "psnr_mask", "ssim_mask", "contrast_wm_gm", "contrast_gm_csf")
#: A sampler score file's stem: a sampler setting (lmid/config.py: SAMPLER_SETTING).
SAMPLER_RE = re.compile(SAMPLER_SETTING)


def _dice_key(frames: dict) -> str:
    """Dice vs ground truth when every slice of every method has it, else vs K-Means of the target."""
    for df in frames.values():
        if "dice_gt_mean" not in df.columns or not np.all(np.isfinite(df["dice_gt_mean"].to_numpy(dtype=float))):
            return "dice_km"
    return "dice_gt"


def summarise_experiment(frames: dict, reference: str, n_boot: int, confidence: float, seed: int) -> dict:
    """Per method: every metric's mean/std/CI and the paired Wilcoxon p against ``reference``."""
    dice_key = _dice_key(frames)
    ref = frames.get(reference)
    out = {
        "dice_reference": "ground truth" if dice_key == "dice_gt" else "K-Means of the real target",
        "dice_key": dice_key,
        "methods": {},
    }
    for method, df in frames.items():
        # Subject-level bootstrap: slices of one subject are not independent (lmid/evaluation/stats.py).
        subjects = df["subject"].astype(str).to_numpy() if "subject" in df.columns else None
        entry: dict = {"n": int(len(df)), "n_subjects": int(len(set(subjects))) if subjects is not None else None}
        for key, col in SUMMARY_COLUMNS.items():
            if col in df.columns:
                entry[key] = summarise(df[col].to_numpy(dtype=float), n_boot, confidence, seed, groups=subjects)
        entry["dice"] = dict(entry.get(dice_key, summarise([], n_boot, confidence, seed)))
        for key in ("dice", "psnr", "ssim", "dice_km", "psnr_mask", "ssim_mask", "contrast_wm_gm", "contrast_gm_csf"):
            if key not in entry:
                continue
            col = SUMMARY_COLUMNS[dice_key] if key == "dice" else SUMMARY_COLUMNS[key]
            entry[key]["p_vs_reference"] = _paired_p(df, ref, col) if ref is not None and method != reference else None
        entry["nfe_per_slice"] = _mean(df, "nfe")
        entry["wall_s_per_slice"] = _mean(df, "wall_s")
        out["methods"][method] = entry
    return out


def _mean(df, col):
    if col not in df.columns:
        return None
    x = df[col].to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def _paired_p(df, ref, col) -> float | None:
    """Wilcoxon on the slices both methods scored (matched on the split index)."""
    if col not in df.columns or col not in ref.columns:
        return None
    merged = df[["index", col]].merge(ref[["index", col]], on="index", suffixes=("", "_ref"))
    if merged.empty:
        return None
    return wilcoxon_p(merged[col].to_numpy(dtype=float), merged[f"{col}_ref"].to_numpy(dtype=float))


def summarise_sampler(files, n_boot: int, confidence: float, seed: int, order: list[str]) -> dict:
    """The sampler table from ``<setting>.csv`` score files (LMIDiffusion on validation slices)."""
    settings = []
    files = sorted(map(Path, files))
    for csv in files:
        m = SAMPLER_RE.fullmatch(csv.stem)
        if not m:
            log.warning(
                "%s: not named after a sampler setting %s; left out of the sampler table", csv, SAMPLER_SETTING_HELP
            )
            continue
        df = read_metrics_csv(csv)
        frames = {csv.stem: df}
        dice_key = _dice_key(frames)
        spec = parse_sampler_setting(csv.stem)
        # Subject-level intervals: a sweep's slices (and its chains of one slice) are not independent.
        groups = df["subject"].astype(str).to_numpy()
        row = {
            "setting": csv.stem,
            "kind": spec["kind"],
            "steps": spec["steps"],
            "spacing": spec["spacing"],
            "eta": spec["eta"],
            "clip_x0": spec["clip_x0"],
            "n": int(len(df)),
            "chains": int(df["chain"].nunique()) if "chain" in df.columns else 1,
            "dice_key": dice_key,
            **{
                key: summarise(
                    df[SUMMARY_COLUMNS[dice_key] if key == "dice" else SUMMARY_COLUMNS[key]].to_numpy(dtype=float),
                    n_boot,
                    confidence,
                    seed,
                    groups=groups,
                )
                for key in SAMPLER_SCORES
                if key == "dice" or SUMMARY_COLUMNS[key] in df.columns
            },
            "nfe_per_slice": _mean(df, "nfe"),
            "wall_s_per_slice": _mean(df, "wall_s"),
        }
        settings.append(row)
    if not settings:
        return {"status": "not run"}
    rank = {s: i for i, s in enumerate(order)}
    settings.sort(key=lambda r: (rank.get(r["setting"], len(rank)), r["kind"], -r["steps"]))
    return {"status": "ok", "settings": settings, "smallest_nfe": smallest_nfe_within_ci(settings)}


def smallest_nfe_within_ci(settings: list[dict], key: str = "dice") -> dict | None:
    """The setting with the fewest network evaluations whose mean lies inside the confidence
    interval of the best setting's mean (by ``key``): the cheapest sampler that is as good."""
    scored = [
        r
        for r in settings
        if r[key].get("mean") is not None and math.isfinite(r[key]["mean"]) and r.get("nfe_per_slice") is not None
    ]
    if not scored:
        return None
    best = max(scored, key=lambda r: r[key]["mean"])
    lo = best[key].get("ci_low")
    lo = best[key]["mean"] if lo is None or not math.isfinite(lo) else lo
    cheapest = min((r for r in scored if r[key]["mean"] >= lo), key=lambda r: (r["nfe_per_slice"], r["setting"]))
    return {
        "metric": key,
        "best": best["setting"],
        "best_mean": best[key]["mean"],
        "ci_low": lo,
        "setting": cheapest["setting"],
        "nfe_per_slice": cheapest["nfe_per_slice"],
        "mean": cheapest[key]["mean"],
    }


#: Keys tried, in order, for SDEdit's validation sweep and its chosen t0 in train_info.json.
T0_SWEEP_KEYS = ("t0_sweep", "val_sweep", "t0_search", "sweep", "validation")
T0_CHOSEN_KEYS = ("t0", "chosen_t0", "best_t0", "t0_chosen", "t0_frac")


def sdedit_sweep(info: dict | None) -> dict:
    """SDEdit's validation t0 sweep from its train_info.json, as rows of a table."""
    if not info:
        return {"status": "not run"}
    raw = next((info[k] for k in T0_SWEEP_KEYS if k in info), None)
    chosen = next((info[k] for k in T0_CHOSEN_KEYS if k in info and not isinstance(info[k], (dict, list))), None)
    rows: list[dict] = []
    if isinstance(raw, list):
        rows = [dict(r) if isinstance(r, dict) else {"value": r} for r in raw]
    elif isinstance(raw, dict):
        for t0, val in raw.items():
            row = {"t0": _maybe_float(t0)}
            row.update(val if isinstance(val, dict) else {"score": val})
            rows.append(row)
    if not rows:
        return {"status": "not run", "chosen_t0": chosen}
    columns: list[str] = ["t0"] if any("t0" in r for r in rows) else []
    for r in rows:
        columns += [k for k in r if k not in columns]
    return {"status": "ok", "chosen_t0": chosen, "columns": columns, "rows": rows}


def _maybe_float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return x


def protocol_shift(summary: dict, frames_by_exp: dict, params, n_boot: int, confidence: float, seed: int) -> dict:
    """Per experiment and method: Dice on the main protocol, on the unseen one, and the change.

    The unseen protocol simulates the same subjects, so slices pair up by (subject, slice index):
    the change is a paired difference, its CI a subject-level bootstrap of the per-slice changes.
    """
    out = {}
    if not params.unseen_protocol_active:
        return {"status": "not run"}
    for exp, e in summary["experiments"].items():
        twin = unseen_experiment(exp, params)
        if twin not in summary["experiments"]:
            continue
        key = SUMMARY_COLUMNS[e["dice_key"]]
        rows = {}
        for method, df in frames_by_exp[exp].items():
            other = frames_by_exp[twin].get(method)
            if other is None or key not in other.columns:
                continue
            pairs = df[["subject", "slice_index", key]].merge(
                other[["subject", "slice_index", key]], on=["subject", "slice_index"], suffixes=("", "_unseen")
            )
            delta = pairs[f"{key}_unseen"].to_numpy(dtype=float) - pairs[key].to_numpy(dtype=float)
            rows[method] = {
                "main": float(np.nanmean(df[key].to_numpy(dtype=float))),
                "unseen": float(np.nanmean(other[key].to_numpy(dtype=float))),
                "change": summarise(delta, n_boot, confidence, seed, groups=pairs["subject"].astype(str).to_numpy()),
                "pairs": int(len(pairs)),
            }
        out[exp] = {"unseen_experiment": twin, "dice_key": e["dice_key"], "methods": rows}
    return (
        {"status": "ok", "protocol": params.unseen_protocol.model_dump(mode="json"), "experiments": out}
        if out
        else {"status": "not run"}
    )


def best_method(summary: dict, key: str, methods: list[str]) -> str | None:
    """The competitor with the highest mean (all three metrics are higher-is-better)."""
    cands = []
    for m in methods:
        mean = (summary["methods"].get(m, {}).get(key) or {}).get("mean")
        if m in COMPETITORS and mean is not None and math.isfinite(mean):
            cands.append((mean, m))
    return max(cands)[1] if len(cands) > 1 else None


def method_stats(summary: dict, method: str, key: str) -> dict | None:
    """A method's statistics of one metric; None when the method was not run, {} when the metric is missing."""
    if method not in summary["methods"]:
        return None
    return summary["methods"][method].get(key) or {}


def timings(summary: dict, infos: dict) -> dict:
    """Per method: training wall time and the main experiment's translation time and NFE per slice."""
    main = summary["experiments"][summary["main_experiment"]]["methods"]
    out = {}
    for m in sorted(set(main) | set(infos)):
        info = infos.get(m, {})
        out[m] = {
            "train_wall_s": info.get("train_wall_s"),
            "translate_wall_s_per_slice": main.get(m, {}).get("wall_s_per_slice"),
            "nfe_per_slice": main.get(m, {}).get("nfe_per_slice"),
            "device": info.get("device"),
        }
    return out


def dvc_metrics(summary: dict) -> dict:
    """``metrics.json``: per experiment and method the headline means, plus the sampler settings'."""
    metrics = {
        exp: {
            m: {k: e[k]["mean"] for k in ("dice", "dice_km", "psnr", "ssim", "psnr_mask", "ssim_mask") if k in e}
            for m, e in s["methods"].items()
        }
        for exp, s in summary["experiments"].items()
    }
    sampler = summary["sampler"]
    if sampler.get("status") == "ok":
        metrics["sampler"] = {
            r["setting"]: {k: r[k]["mean"] for k in ("dice", "psnr", "ssim")} for r in sampler["settings"]
        }
    return metrics
