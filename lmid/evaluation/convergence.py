"""Convergence shown, not declared: scores at training snapshots with their intervals, a verdict
per score, and the conditioning shift between training and translation.

* :func:`snapshot_scores` — one EMA snapshot of LMIDiffusion on the diagnostic validation slices
  (spread over every validation subject): the source translation and the oracle (the real target
  as its own source), each score's mean and the half-width of its subject-level bootstrap
  interval. Results are cached beside the snapshot, keyed by the snapshot's and the split's bytes
  and every setting that enters them, so an evaluation started while training still runs is not
  repeated at the end.
* :func:`verdict` — "converged" means the last third of training moved a score by less than the
  half-width of its interval at the last snapshot; otherwise the score was still rising or falling.
* :func:`conditioning_shift` — what the network sees at translation time against what it saw in
  training: the in-brain distribution of LMI(s, s) and of the sampled LMI(s, x_t) at low t, beside
  LMI(x_0, x_0) and LMI(x_0, x_{t+1}) of the target. A source whose maps sit far from training's
  gives the network inputs it never learnt from.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from lmid.config import LmiParams, Params
from lmid.data.slices import SliceSet
from lmid.diffusion.conditioning import LmiGuide, lmi_map
from lmid.diffusion.model import DiffusionModel
from lmid.evaluation.metrics import score_slice
from lmid.evaluation.segment import KMeansSegmenter
from lmid.evaluation.stats import summarise
from lmid.io import file_sha256, write_json

log = logging.getLogger(__name__)

#: Scores of the convergence curve: thresholded (Dice with frozen centroids) and continuous ones.
CURVE_SCORES = (
    "dice_gt_mean",
    "dice_km_mean",
    "ssim_mask",
    "psnr_mask",
    "contrast_wm_gm",
    "contrast_gm_csf",
    "ssim",
    "psnr",
    "tissue_order",
)
#: Scores the verdict is given for.
VERDICT_SCORES = (
    "dice_gt_mean",
    "dice_km_mean",
    "ssim_mask",
    "psnr_mask",
    "contrast_wm_gm",
    "contrast_gm_csf",
    "oracle_dice_gt_mean",
)
#: Low timesteps at which the sampled LMI(s, x_t) is compared with training's LMI(x_0, x_{t+1}).
SHIFT_T = 50
#: Quantiles of the in-brain LMI distributions.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Bump when what a cached snapshot result holds changes.
CACHE_VERSION = 1


def scores_summary(
    rows: list[dict],
    subjects: np.ndarray,
    keys=CURVE_SCORES,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """``{key: {"mean", "half_width"}}`` over per-slice score rows (subject-level bootstrap)."""
    out = {}
    for key in keys:
        vals = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        s = summarise(vals, n_boot, confidence, seed, groups=subjects)
        lo, hi = s.get("ci_low"), s.get("ci_high")
        half = (hi - lo) / 2 if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi) else None
        out[key] = {"mean": s.get("mean"), "half_width": half}
    return out


def translate_rows(
    params: Params,
    model: DiffusionModel,
    source: np.ndarray,
    split: SliceSet,
    idx: np.ndarray,
    seg: KMeansSegmenter,
    seed: int,
) -> list[dict]:
    """Per-slice scores of the LMI-conditioned translation of ``source`` (the run's sampler, one chain)."""
    from lmid.methods.lmidiffusion import lmi_translate

    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=len(idx))
    out = lmi_translate(model, source, seeds, params.lmidiffusion.sampler, 1, model.device).image
    return [
        score_slice(out[k], split.target[i], split.mask[i], seg, label=split.label[i] if split.has_label else None)
        for k, i in enumerate(idx)
    ]


def snapshot_scores(
    params: Params,
    snapshot: Path,
    split: SliceSet,
    split_path: Path,
    idx: np.ndarray,
    seg: KMeansSegmenter,
    segmenter_path: Path,
    seed: int,
    device: torch.device,
) -> dict:
    """Source and oracle scores of one snapshot (cached beside it, see the module docstring)."""
    sp = params.lmidiffusion.sampler
    key = {
        "version": CACHE_VERSION,
        "snapshot": file_sha256(snapshot),
        "split": file_sha256(split_path),
        "segmenter": file_sha256(segmenter_path),
        "idx": [int(i) for i in idx],
        "seed": int(seed),
        "sampler": sp.model_dump(mode="json"),
        "source": params.data.source_modality,
        "bootstrap": params.evaluate.bootstrap,
        "confidence": params.evaluate.confidence,
    }
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = snapshot.with_name(f"{snapshot.stem}.curve-{tag}.json")
    if cache.is_file():
        try:
            return json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s: unreadable cached scores; computing them again", cache)
    model = DiffusionModel.load(
        snapshot, device, method="lmidiffusion", mixed_precision=params.diffusion.train.mixed_precision
    )
    step = model.meta.get("step")
    subjects = split.subject[idx].astype(str)
    n_boot, conf = params.evaluate.bootstrap, params.evaluate.confidence
    source = scores_summary(
        translate_rows(params, model, split.source[idx], split, idx, seg, seed),
        subjects,
        n_boot=n_boot,
        confidence=conf,
        seed=seed,
    )
    oracle = scores_summary(
        translate_rows(params, model, split.target[idx], split, idx, seg, seed),
        subjects,
        n_boot=n_boot,
        confidence=conf,
        seed=seed,
    )
    result = {"step": None if step is None else int(step), "source": source, "oracle": oracle}
    from lmid.evaluation.tables import clean

    write_json(cache, clean(result))
    # What the cache holds (rounded by the JSON writer) is what every run returns.
    return json.loads(cache.read_text(encoding="utf-8"))


def curve_row(entry: dict) -> dict:
    """One convergence-curve row: flat means (what the figure plots), half-widths, oracle means."""
    row = {"step": entry["step"]}
    row.update({k: v["mean"] for k, v in entry["source"].items()})
    row.update({f"{k}_half_width": v["half_width"] for k, v in entry["source"].items()})
    row.update({f"oracle_{k}": v["mean"] for k, v in entry["oracle"].items()})
    row.update({f"oracle_{k}_half_width": v["half_width"] for k, v in entry["oracle"].items()})
    return row


def verdict(curve: list[dict], keys=VERDICT_SCORES) -> dict:
    """Per score: converged (the last third moved it by less than its interval's half-width) or
    the direction it was still moving in. ``curve``: rows of :func:`curve_row`, any order."""
    curve = sorted((r for r in curve if r.get("step") is not None), key=lambda r: r["step"])
    if len(curve) < 3:
        return {"status": "too few snapshots", "snapshots": len(curve)}
    last = curve[-1]["step"]
    start = next(r for r in curve if r["step"] >= last * 2 / 3)
    if start is curve[-1]:
        start = curve[-2]
    out = {"status": "ok", "from_step": int(start["step"]), "to_step": int(last), "scores": {}}
    for key in keys:
        a, b, half = start.get(key), curve[-1].get(key), curve[-1].get(f"{key}_half_width")
        if a is None or b is None or half is None:
            continue
        moved = float(b) - float(a)
        state = "converged" if abs(moved) < float(half) else ("rising" if moved > 0 else "falling")
        out["scores"][key] = {"moved": moved, "half_width": float(half), "state": state}
    out["converged"] = bool(out["scores"]) and all(v["state"] == "converged" for v in out["scores"].values())
    return out


def _in_brain_stats(maps: torch.Tensor, mask: np.ndarray) -> dict:
    values = maps[:, 0].cpu().numpy()[mask]
    if not values.size:
        return {"mean": None, "quantiles": {}}
    return {
        "mean": float(values.mean()),
        "quantiles": {f"q{int(q * 100):02d}": float(np.quantile(values, q)) for q in QUANTILES},
    }


class _RecordingGuide(LmiGuide):
    """An :class:`LmiGuide` that keeps LMI(s, x_t) of the calls at timesteps ≤ ``SHIFT_T``."""

    def __init__(self, source, lmi, seq):
        super().__init__(source, lmi)
        self.seq = list(seq)
        self.calls = 0
        self.low: list[torch.Tensor] = []

    def __call__(self, x_t):
        t = self.seq[self.calls] if self.calls < len(self.seq) else 0
        self.calls += 1
        built = super().__call__(x_t)
        if t <= SHIFT_T:
            self.low.append(built[:, 1:2].float())
        return built


@torch.no_grad()
def conditioning_shift(
    params: Params,
    model: DiffusionModel,
    sources: dict[str, tuple[np.ndarray, np.ndarray]],
    target: np.ndarray,
    mask: np.ndarray,
    seed: int,
) -> dict:
    """In-brain LMI distributions: training's maps of the target against each source's at translation.

    ``sources``: name → ((N, H, W) source slices, their (N, H, W) brain masks); the target itself
    gives the oracle's maps. ``target``/``mask``: real target slices and their brain masks, whose
    maps are training's.
    """
    from lmid.diffusion import sampler as samplers
    from lmid.methods.lmidiffusion import sampler_plan

    lmi = LmiParams.model_validate(model.meta.get("lmi", {}))
    device = model.device
    x0 = torch.as_tensor(np.clip(target, 0, 1), dtype=torch.float32)[:, None].to(device)
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=gen).to(device)
    ts = [t for t in (5, 20, SHIFT_T) if t < model.schedule.T - 1]
    train_low = torch.cat(
        [lmi_map(x0, model.schedule.add_noise(x0, eps, torch.full((len(x0),), t + 1, device=device)), lmi) for t in ts]
    )
    out = {
        "t_max": SHIFT_T,
        "slices": int(len(target)),
        "training": {
            "self": _in_brain_stats(lmi_map(x0, x0, lmi), mask),
            "low_t": _in_brain_stats(train_low, np.concatenate([mask] * len(ts))),
        },
        "sources": {},
    }
    sp = params.lmidiffusion.sampler
    start, seq = sampler_plan(model, sp)
    for name, (images, src_mask) in sources.items():
        s = torch.as_tensor(np.clip(images, 0, 1), dtype=torch.float32)[:, None].to(device)
        noise = samplers.ChainNoise([seed + k for k in range(len(s))], device)
        guide = _RecordingGuide(s, lmi, seq)
        x = noise.randn(s.shape[1:]) if sp.start == "noise" else samplers.noised(model.schedule, s, start, noise)
        samplers.run(sp.kind, model.eps_fn(guide), model.schedule, x, seq, noise, eta=sp.eta, clip_x0=sp.clip_x0)
        entry = {"self": _in_brain_stats(guide.self_map, src_mask), "slices": int(len(images))}
        if guide.low:
            entry["low_t"] = _in_brain_stats(torch.cat(guide.low), np.concatenate([src_mask] * len(guide.low)))
            entry["low_t_calls"] = len(guide.low)
        out["sources"][name] = entry
    return out


def source_contrast(images: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per slice, the source's own tissue contrast: |mean WM − mean GM| + |mean GM − mean CSF| in
    the brain (labels 1 CSF, 2 GM, 3 WM); NaN where a tissue is missing. Beside per-slice Dice it
    shows when a source has too little contrast for LMI to carry."""
    out = np.full(len(images), np.nan)
    for k, (img, lab, m) in enumerate(zip(images, labels, mask)):
        means = [img[(lab == c) & m].mean() if np.any((lab == c) & m) else np.nan for c in (1, 2, 3)]
        if np.all(np.isfinite(means)):
            out[k] = abs(means[2] - means[1]) + abs(means[1] - means[0])
    return out
