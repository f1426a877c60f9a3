"""Diagnostics of LMIDiffusion that say *where* a translation fails, on the validation split.

Three measurements, written to one JSON file by ``lmid diagnose``:

* **Conditioning ablation.** The validation ε-loss of the trained network, with the network input
  built exactly as in training (``[x_t, LMI(x_0, x_{t+1}), LMI(x_0, x_0)]`` from clean validation
  T1 slices, one shared ε), against the same loss with the two LMI channels taken from *another*
  slice of the batch (a cyclic shift). If the shuffled loss is not clearly higher, the network
  ignores its conditioning and can only produce its prior.
* **Oracle.** The real T1 slice translated as if it were the source: the best that LMI
  conditioning can deliver with this network and sampler (the map LMI(T1, T1) is the one seen in
  training). A poor oracle points at the prior or the sampler, not at the modality gap.
* **Convergence.** The PD → T1 translation of the same validation slices with every snapshot of
  the EMA weights kept during training (``diffusion.train.snapshot_every``), scored like the test
  set: when Dice, SSIM and PSNR stop rising, more training would not help.

Every number is on validation slices (never test), with fixed seeds: same inputs, same file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from lmid.config import LmiParams, Params
from lmid.data.slices import SliceSet, load_slices, spread_indices
from lmid.diffusion.conditioning import lmi_map
from lmid.diffusion.model import DiffusionModel
from lmid.errors import InputFileError, LmidError
from lmid.evaluation.metrics import score_slice
from lmid.evaluation.segment import KMeansSegmenter
from lmid.io import write_json

log = logging.getLogger(__name__)

#: Timesteps of the conditioning ablation: dense where the LMI map of x_t is informative.
ABLATION_T = (5, 20, 50, 100, 200, 400, 700, 999)
#: Offset added to params.seed for the diagnostics' noise.
SEED_OFFSET = 5107
#: Per-slice scores summarised in the oracle and convergence entries.
SCORES = ("dice_gt_mean", "dice_km_mean", "psnr", "ssim", "psnr_mask", "ssim_mask", "contrast_wm_gm",
          "contrast_gm_csf", "tissue_order")


@torch.no_grad()
def conditioning_ablation(model: DiffusionModel, target: np.ndarray, seed: int,
                          timesteps=ABLATION_T) -> dict:
    """ε-MSE per timestep with the true LMI channels and with channels from another slice."""
    if model.in_channels != 3:
        raise LmidError("the conditioning ablation needs the 3-channel LMIDiffusion network")
    if len(target) < 2:
        raise LmidError("the conditioning ablation needs at least 2 validation slices")
    lmi = LmiParams.model_validate(model.meta.get("lmi", {}))
    device = model.device
    x0 = torch.as_tensor(np.clip(target, 0, 1), dtype=torch.float32)[:, None].to(device)
    gen = torch.Generator().manual_seed(seed)
    self_map = lmi_map(x0, x0, lmi)
    eps_fn = model.eps_fn()
    rows = []
    for t in timesteps:
        t = min(int(t), model.schedule.T - 1)
        eps = torch.randn(x0.shape, generator=gen).to(device)
        tt = torch.full((len(x0),), t, dtype=torch.long, device=device)
        x_t = model.schedule.add_noise(x0, eps, tt)
        x_next = model.schedule.add_noise(x0, eps, (tt + 1).clamp_max(model.schedule.T - 1))
        cond = torch.cat([lmi_map(x0, x_next, lmi), self_map], dim=1)
        true = F.mse_loss(eps_fn(torch.cat([x_t, cond], 1), tt), eps).item()
        # Another slice's maps, same x_t: the network's input differs only in the conditioning.
        shuffled = F.mse_loss(eps_fn(torch.cat([x_t, cond.roll(1, dims=0)], 1), tt), eps).item()
        rows.append({"t": t, "loss_true": true, "loss_shuffled": shuffled,
                     "ratio": shuffled / true if true > 0 else float("nan")})
    true = float(np.mean([r["loss_true"] for r in rows]))
    shuffled = float(np.mean([r["loss_shuffled"] for r in rows]))
    return {"slices": int(len(x0)), "timesteps": rows, "loss_true": true, "loss_shuffled": shuffled,
            "ratio": shuffled / true if true > 0 else float("nan")}


def _translate_and_score(params: Params, model: DiffusionModel, source: np.ndarray, split: SliceSet,
                         idx: np.ndarray, seg: KMeansSegmenter, seed: int) -> dict:
    from lmid.methods.lmidiffusion import lmi_translate

    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=len(idx))
    out = lmi_translate(model, source, seeds, params.lmidiffusion.sampler, 1, model.device).image
    rows = [score_slice(out[k], split.target[i], split.mask[i], seg,
                        label=split.label[i] if split.has_label else None) for k, i in enumerate(idx)]
    summary = {}
    for key in SCORES:
        vals = np.array([r[key] for r in rows], dtype=float)
        vals = vals[np.isfinite(vals)]
        summary[key] = float(vals.mean()) if vals.size else None
    return summary


def diagnose(params: Params, model_path: Path, snapshots: list[Path], val_path: Path, segmenter_path: Path,
             out_path: Path, slices: int = 8, device: str = "auto") -> dict:
    """``lmid diagnose``: ablation, oracle and convergence curve; writes ``out_path`` (JSON)."""
    from lmid.checkpoint import device_from_arg

    dev = device_from_arg(device)
    val = load_slices(val_path)
    if len(val) < 2:
        raise InputFileError(val_path, f"needs at least 2 validation slices, has {len(val)}")
    seg = KMeansSegmenter.load(segmenter_path)
    model = DiffusionModel.load(Path(model_path), dev, method="lmidiffusion",
                                mixed_precision=params.diffusion.train.mixed_precision)
    idx = spread_indices(len(val), slices)
    seed = params.seed + SEED_OFFSET
    sp = params.lmidiffusion.sampler
    result: dict = {"slices": int(len(idx)), "split": str(val_path),
                    "sampler": {"kind": sp.kind, "steps": sp.steps, "spacing": sp.spacing, "start": sp.start}}
    log.info("diagnose: conditioning ablation on %d validation slices", len(idx))
    result["ablation"] = conditioning_ablation(model, val.target[idx], seed)
    log.info("diagnose: oracle (real %s as the source)", params.data.target_modality)
    result["oracle"] = _translate_and_score(params, model, val.target[idx], val, idx, seg, seed)
    result["source"] = _translate_and_score(params, model, val.source[idx], val, idx, seg, seed)
    curve = []
    for path in sorted(snapshots):
        snap = DiffusionModel.load(Path(path), dev, method="lmidiffusion",
                                   mixed_precision=params.diffusion.train.mixed_precision)
        step = snap.meta.get("step")
        if step is None:
            raise InputFileError(path, "not a training snapshot (no step recorded)")
        log.info("diagnose: snapshot at step %s", step)
        curve.append({"step": int(step), **_translate_and_score(params, snap, val.source[idx], val, idx, seg, seed)})
    final = model.meta.get("step")
    if final is not None and all(r["step"] < int(final) for r in curve):
        curve.append({"step": int(final), **result["source"]})
    result["convergence"] = sorted(curve, key=lambda r: r["step"])
    from lmid.evaluation.tables import clean

    write_json(out_path, clean(result))
    return result
