"""Sanity evidence for the competing methods: is each baseline trained, or is its column noise?

A comparison against baselines that never learnt says nothing, and whole-slice scores hide it
(a white disc on a black background has a good whole-slice SSIM). ``lmid check-baselines`` looks
at what each baseline *is*, apart from the translation it is scored on:

* StyleGAN2-ADA: random samples of the EMA generator (no inversion). Their foreground intensity
  histogram is compared with that of real target slices (1-Wasserstein distance); a generator that
  makes saturated discs has a distance far above the floor of real slices against real slices.
* SDEdit: unconditional samples of its DDPM (DDIM from pure noise), judged the same way, also at
  every training snapshot (its convergence curve); its t0 sweep on validation slices is already in
  its train_info.json.
* CycleGAN: both directions on the test split. G_BA (target → source) against the real source
  slice, and the two cycle reconstructions, in PSNR inside the brain mask.
* The floor: the same histogram distance between as many real slices, drawn at random, and all of
  them. A generator cannot be told from real slices by this number once it is near the floor.

"Foreground" is every pixel above ``FOREGROUND`` for generated and real slices alike (generated
slices have no brain mask), so both sides are measured the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from lmid.config import Params
from lmid.io import save_npz, write_json

log = logging.getLogger(__name__)

#: Intensity above which a pixel counts as foreground (images on [0, 1], background ~0).
FOREGROUND = 0.05
#: Added to params.seed for the samples' noise, apart from every other stream.
SEED_OFFSET = 6_100
#: DDIM steps for SDEdit's unconditional samples.
DDPM_SAMPLE_STEPS = 50


def foreground_stats(images: np.ndarray, reference: np.ndarray) -> dict:
    """Foreground fraction, mean and the 1-Wasserstein distance of the foreground intensities."""
    from scipy.stats import wasserstein_distance

    fg = images[images > FOREGROUND]
    ref = reference[reference > FOREGROUND]
    return {
        "foreground_fraction": float(np.mean(images > FOREGROUND)),
        "foreground_mean": float(fg.mean()) if fg.size else None,
        "saturated_fraction": float(np.mean(fg > 0.98)) if fg.size else None,
        "w1_to_real": float(wasserstein_distance(fg, ref)) if fg.size and ref.size else None,
    }


def _psnr_in_mask(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean over slices of the in-brain PSNR that the tables use (lmid.evaluation.metrics.psnr)."""
    from lmid.evaluation.metrics import psnr

    values = [psnr(y, x, m) for x, y, m in zip(a, b, mask) if m.any()]
    return float(np.mean(values)) if values else float("nan")


def stylegan2_samples(params: Params, model_path: Path, n: int, device: torch.device) -> np.ndarray:
    from lmid.methods.stylegan2 import StyleGan2

    g = StyleGan2().load(params, model_path, device)
    gen = torch.Generator().manual_seed(params.seed + SEED_OFFSET)
    z = torch.randn(n, g.z_dim, generator=gen).to(device)
    with torch.no_grad():
        noise = g.synthesis.make_noise(n, gen, device)
        img = (g(z, noise).float() + 1.0) / 2.0
    return img[:, 0].clamp(0, 1).cpu().numpy().astype(np.float32)


def ddpm_samples(params: Params, model_path: Path, n: int, shape: tuple[int, int], device: torch.device) -> np.ndarray:
    from lmid.diffusion import sampler as samplers
    from lmid.diffusion.model import DiffusionModel

    model = DiffusionModel.load(
        model_path, device, method="sdedit", mixed_precision=params.diffusion.train.mixed_precision
    )
    schedule = model.schedule
    noise = samplers.ChainNoise([samplers.chain_seed(params.seed + SEED_OFFSET + i, 0) for i in range(n)], device)
    x = noise.randn((1, *shape))  # (n, 1, H, W): one chain per sample
    seq = schedule.timesteps(schedule.T - 1, DDPM_SAMPLE_STEPS)
    with torch.no_grad():
        y = samplers.run("ddim", model.eps_fn(), schedule, x, seq, noise, eta=0.0)
    return y[:, 0].float().cpu().numpy().astype(np.float32)


def ddpm_snapshot_curve(params: Params, folder: Path, n: int, real: np.ndarray, device: torch.device) -> list[dict]:
    """The unconditional samples' foreground statistics (W1 to real slices) at every training
    snapshot of SDEdit's DDPM (``diffusion.train.snapshot_every``): its convergence evidence."""
    curve = []
    for path in sorted(Path(folder).glob("step*.pt")) if Path(folder).is_dir() else []:
        from lmid.checkpoint import load_checkpoint

        step = (load_checkpoint(path).get("meta") or {}).get("step")
        imgs = ddpm_samples(params, path, n, real.shape[1:], device)
        curve.append({"step": None if step is None else int(step), **foreground_stats(imgs, real)})
        log.info("check-baselines: sdedit snapshot %s: W1 %.4f", path.name, curve[-1]["w1_to_real"] or float("nan"))
    return curve


def cyclegan_directions(params: Params, model_path: Path, test, device: torch.device) -> tuple[dict, dict]:
    from lmid.methods.cyclegan import CycleGan

    method = CycleGan()
    g_ab = method.load(params, model_path, device)
    g_ba = method.load_reverse(model_path, device)
    if g_ba is None:
        return {"status": f"{model_path} holds no G_BA (written before it was stored); train cyclegan again"}, {}
    zeros = np.zeros(len(test), np.int64)
    fake_t = method.translate(params, g_ab, test.source, zeros, device).image
    fake_s = method.translate(params, g_ba, test.target, zeros, device).image
    rec_s = method.translate(params, g_ba, fake_t, zeros, device).image
    rec_t = method.translate(params, g_ab, fake_s, zeros, device).image
    stats = {
        "status": "ok",
        "psnr_mask_target_to_source": _psnr_in_mask(fake_s, test.source, test.mask),
        "psnr_mask_source_to_target": _psnr_in_mask(fake_t, test.target, test.mask),
        "psnr_mask_cycle_source": _psnr_in_mask(rec_s, test.source, test.mask),
        "psnr_mask_cycle_target": _psnr_in_mask(rec_t, test.target, test.mask),
    }
    return stats, {"cyclegan_target_to_source": fake_s, "cyclegan_source_to_target": fake_t}


def _given_models(params: Params, models) -> dict[str, Path]:
    """``{method: model.pt}`` of the ``--models`` files, each in a folder named after a method that
    is checked here and that ``params.methods`` runs; anything else is refused, not skipped (a
    mistyped folder would otherwise leave an empty baselines.json behind an exit status of 0)."""
    from lmid.errors import InputFileError
    from lmid.registry import METHODS

    checked = [name for name, s in METHODS.items() if s.baseline_checked]
    given: dict[str, Path] = {}
    for path in map(Path, models):
        name = path.parent.name
        if name not in checked:
            kind = "is not a method" if name not in METHODS else "is a method check-baselines does not inspect"
            raise InputFileError(
                path,
                f"the folder name {name!r} {kind}: --models takes <models>/<method>/model.pt "
                f"with <method> one of {', '.join(checked)}",
            )
        if name not in params.methods:
            raise InputFileError(path, f"{name} is not among the methods of params ({', '.join(params.methods)})")
        if name in given:
            raise InputFileError(path, f"a second model of {name} (the first: {given[name]})")
        if not path.is_file():
            raise InputFileError(path, f"model not found (train it first: lmid train --method {name})")
        given[name] = path
    return given


def check_baselines(
    params: Params,
    models,
    test_path: Path,
    out_json: Path,
    out_npz: Path,
    samples: int = 16,
    device: str = "auto",
    val_path: Path | None = None,
    segmenter_path: Path | None = None,
    published_curves: dict | None = None,
) -> dict:
    """Write ``out_json`` (numbers for the report) and ``out_npz`` (the images it shows).

    ``models`` are ``<method>/model.pt`` files (the folder names the method); a checked method of
    ``params.methods`` without one is recorded as not found. With ``val_path`` and
    ``segmenter_path``, ``curves`` holds each model's snapshot curve
    (:mod:`lmid.evaluation.snapshot_curves`) on ``evaluate.diagnostic_slices`` validation slices;
    with ``published_curves`` (published models have no snapshots) the curves measured at training
    time are kept instead."""
    from lmid.checkpoint import device_from_arg
    from lmid.data.slices import load_slices

    given = _given_models(params, models)
    out_json, out_npz = Path(out_json), Path(out_npz)
    device = device_from_arg(device)
    test = load_slices(Path(test_path))
    real = test.target
    rng = np.random.default_rng(params.seed + SEED_OFFSET)
    pick = rng.choice(len(real), size=min(samples, len(real)), replace=False)
    result: dict = {
        "foreground_threshold": FOREGROUND,
        "samples": samples,
        "n_real": int(len(real)),
        "real": foreground_stats(real, real),
        "floor": {
            **foreground_stats(real[pick], real),
            "what": f"{len(pick)} real slices drawn at random against all {len(real)}",
        },
        "methods": {},
    }
    arrays: dict[str, np.ndarray] = {"real": real[pick]}

    def model_of(name: str) -> Path | None:
        path = given.get(name, Path(name) / "model.pt")
        if name not in params.methods:
            return None
        if name not in given or not path.is_file():
            log.warning("%s: not found; %s left out of the baseline checks", path, name)
            result["methods"][name] = {"status": f"{path} not found"}
            return None
        return path

    if (path := model_of("stylegan2")) is not None:
        imgs = stylegan2_samples(params, path, samples, device)
        result["methods"]["stylegan2"] = {
            "status": "ok",
            "what": "random samples of the EMA generator",
            **foreground_stats(imgs, real),
        }
        arrays["stylegan2_samples"] = imgs
    if (path := model_of("sdedit")) is not None:
        imgs = ddpm_samples(params, path, samples, real.shape[1:], device)
        result["methods"]["sdedit"] = {
            "status": "ok",
            "what": f"unconditional DDPM samples (DDIM, {DDPM_SAMPLE_STEPS} steps)",
            **foreground_stats(imgs, real),
            # Published models have no snapshots: their curve was measured at training time.
            "snapshots": published_curves.get("ddpm_snapshots", [])
            if published_curves is not None
            else ddpm_snapshot_curve(params, path.parent / "snapshots", samples, real, device),
        }
        arrays["sdedit_samples"] = imgs
    if (path := model_of("cyclegan")) is not None:
        stats, imgs = cyclegan_directions(params, path, test, device)
        result["methods"]["cyclegan"] = stats
        for key, value in imgs.items():
            arrays[key] = value[pick]
    if published_curves is not None:
        result["curves"] = published_curves.get("baselines", {})
        result["curves_from"] = "published models (measured at training time)"
    elif val_path is not None and segmenter_path is not None:
        result["curves"] = snapshot_curves(params, given, Path(val_path), Path(segmenter_path), device)
    arrays["index"] = pick.astype(np.int64)
    save_npz(out_npz, **arrays)
    write_json(out_json, result)
    return result


def snapshot_curves(
    params: Params, given: dict[str, Path], val_path: Path, segmenter_path: Path, device: torch.device
) -> dict:
    """``{method: [snapshot entry, ...]}`` for every given model whose folder keeps snapshots."""
    from lmid.data.slices import load_slices, spread_indices
    from lmid.evaluation.segment import KMeansSegmenter
    from lmid.evaluation.snapshot_curves import method_curve

    val = load_slices(val_path)
    idx = spread_indices(len(val), params.evaluate.diagnostic_slices)
    seg = KMeansSegmenter.load(segmenter_path)
    return {
        name: method_curve(
            params,
            name,
            path.parent / "snapshots",
            val,
            val_path,
            idx,
            seg,
            segmenter_path,
            params.seed,
            device,
            final_model=path,
        )
        for name, path in given.items()
    }
