"""Quality against training compute, for every method that keeps snapshots.

A GAN's flat loss says nothing about its samples, so each baseline is judged at its training
snapshots (``<method>.train.snapshot_every``; every snapshot carries the training loop's CPU
seconds so far, :mod:`lmid.clock`) by what it is for:

* every translating method: validation Dice, in-brain SSIM / PSNR and tissue contrast of its
  translation of the diagnostic validation slices (:func:`translation_scores`); the segmentation
  reference (``synthseg``): the Dice of its own labels of those source slices, scored as
  ``lmid evaluate`` scores them (its image scores are NaN);
* CycleGAN, its own check: the in-brain PSNR of both cycles, source → target → source and
  target → source → target (:func:`cyclegan_checks`);
* StyleGAN2-ADA, its own check: W1 of its random samples' foreground intensities against real
  target slices, and the fraction of saturated foreground pixels of its inversions beside that of
  the real target slices (:func:`stylegan2_checks`).

Each snapshot's result is cached beside it, keyed by its bytes, the split's and every setting
that enters it, so curves computed while training runs are not computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from lmid.config import Params
from lmid.data.slices import SliceSet
from lmid.errors import LmidError
from lmid.evaluation.convergence import scores_summary
from lmid.evaluation.metrics import score_slice
from lmid.evaluation.segment import KMeansSegmenter
from lmid.io import file_sha256, write_json

log = logging.getLogger(__name__)

#: Bump when what a cached result holds changes.
CACHE_VERSION = 1
#: A foreground pixel at or above this counts as saturated (images on [0, 1]).
SATURATED = 0.99
#: Random samples per StyleGAN2 snapshot for its W1 check.
GAN_SAMPLES = 64


def snapshot_meta(path: Path) -> dict:
    from lmid.checkpoint import load_checkpoint

    return dict(load_checkpoint(path).get("meta") or {})


def snapshots_of(folder: Path) -> list[Path]:
    folder = Path(folder)
    return sorted(folder.glob("step*.pt")) if folder.is_dir() else []


def saturated_fraction(images: np.ndarray, mask: np.ndarray | None = None, foreground: float = 0.05) -> float:
    """Fraction of foreground pixels (inside ``mask`` where given) at or above :data:`SATURATED`."""
    sel = images > foreground if mask is None else (mask & (images > foreground))
    return float(np.mean(images[sel] >= SATURATED)) if sel.any() else float("nan")


def translation_scores(
    params: Params,
    method: str,
    model,
    split: SliceSet,
    idx: np.ndarray,
    seg: KMeansSegmenter,
    seed: int,
    device: torch.device,
) -> tuple[dict, np.ndarray]:
    """Scores of ``method``'s translation of ``split.source[idx]`` (sample 0) and the images.

    A segmentation reference's own labels are scored as ``lmid evaluate`` scores them (inside each
    slice's brain mask, image scores NaN)."""
    from lmid.methods import get_method

    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=len(idx))
    result = get_method(method).translate(params, model, split.source[idx], seeds, device)
    out, labels = result.image, result.labels
    rows = [
        score_slice(
            out[k],
            split.target[i],
            split.mask[i],
            seg,
            label=split.label[i] if split.has_label else None,
            pred_labels=labels[k] if labels is not None else None,
        )
        for k, i in enumerate(idx)
    ]
    summary = scores_summary(
        rows,
        split.subject[idx].astype(str),
        n_boot=params.evaluate.bootstrap,
        confidence=params.evaluate.confidence,
        seed=seed,
    )
    return summary, out


def cyclegan_checks(
    params: Params, path: Path, split: SliceSet, idx: np.ndarray, fake_target: np.ndarray, device: torch.device
) -> dict:
    from lmid.evaluation.baselines import _psnr_in_mask
    from lmid.methods.cyclegan import CycleGan

    method = CycleGan()
    g_ab, g_ba = method.load(params, path, device), method.load_reverse(path, device)
    zeros = np.zeros(len(idx), np.int64)
    fake_source = method.translate(params, g_ba, split.target[idx], zeros, device).image
    rec_source = method.translate(params, g_ba, fake_target, zeros, device).image
    rec_target = method.translate(params, g_ab, fake_source, zeros, device).image
    mask = split.mask[idx]
    return {
        "psnr_mask_cycle_source": _psnr_in_mask(rec_source, split.source[idx], mask),
        "psnr_mask_cycle_target": _psnr_in_mask(rec_target, split.target[idx], mask),
        "psnr_mask_target_to_source": _psnr_in_mask(fake_source, split.source[idx], mask),
    }


def stylegan2_checks(
    params: Params, path: Path, split: SliceSet, idx: np.ndarray, inverted: np.ndarray, device: torch.device
) -> dict:
    from lmid.evaluation.baselines import foreground_stats, stylegan2_samples

    samples = stylegan2_samples(params, path, GAN_SAMPLES, device)
    mask = split.mask[idx]
    return {
        "samples_w1": foreground_stats(samples, split.target)["w1_to_real"],
        "inversion_saturated": saturated_fraction(inverted, mask),
        "real_saturated": saturated_fraction(split.target[idx], mask),
    }


CHECKS = {"cyclegan": cyclegan_checks, "stylegan2": stylegan2_checks}


def snapshot_entry(
    params: Params,
    method: str,
    path: Path,
    split: SliceSet,
    split_path: Path,
    idx: np.ndarray,
    seg: KMeansSegmenter,
    segmenter_path: Path,
    seed: int,
    device: torch.device,
    t0: float | None = None,
) -> dict:
    """One snapshot's scores and checks (cached beside it)."""
    from lmid.methods import get_method

    section = getattr(params, method, None)
    key = {
        "version": CACHE_VERSION,
        "method": method,
        "snapshot": file_sha256(path),
        "split": file_sha256(split_path),
        "segmenter": file_sha256(segmenter_path),
        "idx": [int(i) for i in idx],
        "seed": int(seed),
        "section": section.model_dump(mode="json") if section is not None else None,
        "bootstrap": params.evaluate.bootstrap,
        "confidence": params.evaluate.confidence,
        "t0": t0,
    }
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = path.with_name(f"{path.stem}.scores-{tag}.json")
    if cache.is_file():
        try:
            return json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s: unreadable cached scores; computing them again", cache)
    meta = snapshot_meta(path)
    if method == "sdedit":
        # A snapshot of the DDPM carries no t0: it is scored at the t0 the finished training chose.
        from lmid.diffusion.model import DiffusionModel

        model = DiffusionModel.load(
            path, device, method="sdedit", mixed_precision=params.diffusion.train.mixed_precision
        )
        model.meta["t0"] = t0
    else:
        model = get_method(method).load(params, path, device)
    scores, images = translation_scores(params, method, model, split, idx, seg, seed, device)
    entry = {"step": meta.get("step"), "cpu_s": meta.get("cpu_s"), "wall_s": meta.get("wall_s"), "scores": scores}
    if method in CHECKS:
        entry["checks"] = CHECKS[method](params, path, split, idx, images, device)
    from lmid.evaluation.tables import clean

    write_json(cache, clean(entry))
    log.info("%s snapshot %s: Dice %.3f", method, path.name, scores["dice_gt_mean"]["mean"] or float("nan"))
    return json.loads(cache.read_text(encoding="utf-8"))


def method_curve(
    params: Params,
    method: str,
    folder: Path,
    split: SliceSet,
    split_path: Path,
    idx: np.ndarray,
    seg: KMeansSegmenter,
    segmenter_path: Path,
    seed: int,
    device: torch.device,
    final_model: Path | None = None,
) -> list[dict]:
    """Every snapshot of ``method`` under ``folder``, in step order (SDEdit's at the t0 stored in
    ``final_model``)."""
    t0 = None
    if method == "sdedit":
        if final_model is None:
            raise LmidError("sdedit: its snapshot curve needs the trained model.pt (for the chosen t0)")
        t0 = snapshot_meta(final_model).get("t0")
        if t0 is None:
            raise LmidError(f"{final_model}: no chosen t0 stored (train sdedit again)")
        t0 = float(t0)
    return [
        snapshot_entry(params, method, p, split, split_path, idx, seg, segmenter_path, seed, device, t0=t0)
        for p in snapshots_of(folder)
    ]
