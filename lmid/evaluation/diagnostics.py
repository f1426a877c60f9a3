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
* **Convergence.** The PD → T1 translation and the oracle of the same validation slices with every
  snapshot of the EMA weights kept during training (``diffusion.train.snapshot_every``), scored like
  the test set with subject-level intervals, and a verdict per score
  (:mod:`lmid.evaluation.convergence`).
* **Conditioning shift.** In-brain LMI distributions of each source at translation time against
  training's, and per-slice Dice against the source's own tissue contrast.

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
from lmid.evaluation.convergence import (
    conditioning_shift,
    curve_row,
    snapshot_scores,
    source_contrast,
    translate_rows,
    verdict,
)
from lmid.evaluation.segment import KMeansSegmenter
from lmid.io import write_json

log = logging.getLogger(__name__)

#: Timesteps of the conditioning ablation: dense where the LMI map of x_t is informative.
ABLATION_T = (5, 20, 50, 100, 200, 400, 700, 999)
#: Offset added to params.seed for the diagnostics' noise.
SEED_OFFSET = 5107
#: Slices of the conditioning-shift measurement (one full sampling run per source).
SHIFT_SLICES = 8
#: Per-slice scores summarised in the oracle and source entries.
SCORES = (
    "dice_gt_mean",
    "dice_km_mean",
    "psnr",
    "ssim",
    "psnr_mask",
    "ssim_mask",
    "contrast_wm_gm",
    "contrast_gm_csf",
    "tissue_order",
)


@torch.no_grad()
def conditioning_ablation(model: DiffusionModel, target: np.ndarray, seed: int, timesteps=ABLATION_T) -> dict:
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
        rows.append(
            {
                "t": t,
                "loss_true": true,
                "loss_shuffled": shuffled,
                "ratio": shuffled / true if true > 0 else float("nan"),
            }
        )
    true = float(np.mean([r["loss_true"] for r in rows]))
    shuffled = float(np.mean([r["loss_shuffled"] for r in rows]))
    return {
        "slices": int(len(x0)),
        "timesteps": rows,
        "loss_true": true,
        "loss_shuffled": shuffled,
        "ratio": shuffled / true if true > 0 else float("nan"),
    }


def _translate_and_score(
    params: Params,
    model: DiffusionModel,
    source: np.ndarray,
    split: SliceSet,
    idx: np.ndarray,
    seg: KMeansSegmenter,
    seed: int,
) -> tuple[dict, list[dict]]:
    """Mean scores of a translation of ``source`` (and its per-slice rows)."""
    rows = translate_rows(params, model, source, split, idx, seg, seed)
    summary = {}
    for key in SCORES:
        vals = np.array([r[key] for r in rows], dtype=float)
        vals = vals[np.isfinite(vals)]
        summary[key] = float(vals.mean()) if vals.size else None
    return summary, rows


def diagnose(
    params: Params,
    model_path: Path,
    snapshots: list[Path],
    val_path: Path,
    segmenter_path: Path,
    out_path: Path,
    slices: int | None = None,
    device: str = "auto",
    unseen_val_path: Path | None = None,
    published_curves: dict | None = None,
) -> dict:
    """``lmid diagnose``: ablation, oracle, convergence curve with its verdict, and the
    conditioning shift; writes ``out_path`` (JSON). ``slices`` defaults to
    ``evaluate.diagnostic_slices``, spread over every validation subject. With
    ``published_curves`` (``curves.json`` of published models, :mod:`lmid.published`) the
    convergence curve is the one measured when the models were trained, since their snapshots are
    not published."""
    from lmid.checkpoint import device_from_arg

    dev = device_from_arg(device)
    val = load_slices(val_path)
    if len(val) < 2:
        raise InputFileError(val_path, f"needs at least 2 validation slices, has {len(val)}")
    seg = KMeansSegmenter.load(segmenter_path)
    model = DiffusionModel.load(
        Path(model_path), dev, method="lmidiffusion", mixed_precision=params.diffusion.train.mixed_precision
    )
    idx = spread_indices(len(val), params.evaluate.diagnostic_slices if slices is None else slices)
    seed = params.seed + SEED_OFFSET
    sp = params.lmidiffusion.sampler
    src, tgt = params.data.source_modality, params.data.target_modality
    result: dict = {
        "slices": int(len(idx)),
        "subjects": int(len(set(val.subject[idx].tolist()))),
        "split": str(val_path),
        "sampler": sp.model_dump(mode="json"),
    }
    log.info("diagnose: conditioning ablation on %d validation slices", len(idx))
    result["ablation"] = conditioning_ablation(model, val.target[idx], seed)
    log.info("diagnose: oracle (real %s as the source)", tgt)
    result["oracle"], _ = _translate_and_score(params, model, val.target[idx], val, idx, seg, seed)
    result["source"], rows = _translate_and_score(params, model, val.source[idx], val, idx, seg, seed)

    # Per-slice Dice against the source's own tissue contrast (when does LMI carry enough?).
    per_source = {src: (val.source[idx], rows)}
    for name, images in val.extra.items():
        log.info("diagnose: %s → %s on the same slices", name, tgt)
        per_source[name] = (images[idx], _translate_and_score(params, model, images[idx], val, idx, seg, seed)[1])
    dice_key = "dice_gt_mean" if val.has_label else "dice_km_mean"
    result["contrast_vs_dice"] = {
        name: {
            "source_contrast": source_contrast(images, val.label[idx], val.mask[idx]).tolist(),
            "dice": [r[dice_key] for r in rws],
            "dice_key": dice_key,
        }
        for name, (images, rws) in per_source.items()
    }

    # What the network sees at translation time against training (a subset keeps it quick).
    pick = spread_indices(len(idx), SHIFT_SLICES)
    shift_idx = idx[pick]
    sources = {name: (images[pick], val.mask[shift_idx]) for name, (images, _) in per_source.items()}
    sources[f"{tgt} (oracle)"] = (val.target[shift_idx], val.mask[shift_idx])
    if unseen_val_path is not None:
        unseen = load_slices(unseen_val_path)
        u_idx = spread_indices(len(unseen), SHIFT_SLICES)  # its own slices and masks
        for name in (src, *unseen.extra):
            images = unseen.source if name == src else unseen.extra[name]
            sources[f"{name} (unseen protocol)"] = (images[u_idx], unseen.mask[u_idx])
    log.info("diagnose: conditioning shift on %d slices", len(shift_idx))
    result["conditioning_shift"] = conditioning_shift(
        params, model, sources, val.target[shift_idx], val.mask[shift_idx], seed
    )

    curve = []
    for path in sorted(snapshots):
        log.info("diagnose: snapshot %s", Path(path).name)
        entry = snapshot_scores(params, Path(path), val, Path(val_path), idx, seg, Path(segmenter_path), seed, dev)
        if entry["step"] is None:
            raise InputFileError(path, "not a training snapshot (no step recorded)")
        row = curve_row(entry)
        # The training clock at the snapshot (absent in snapshots written before it was kept).
        from lmid.evaluation.snapshot_curves import snapshot_meta

        meta = snapshot_meta(Path(path))
        row.update({k: meta[k] for k in ("cpu_s", "wall_s") if meta.get(k) is not None})
        curve.append(row)
    result["convergence"] = sorted(curve, key=lambda r: r["step"])
    result["convergence_verdict"] = verdict(result["convergence"])
    if published_curves is not None and not curve:
        result["convergence"] = published_curves.get("convergence", [])
        result["convergence_verdict"] = published_curves.get("convergence_verdict") or verdict(result["convergence"])
        result["convergence_from"] = "published models (measured at training time)"
    from lmid.evaluation.tables import clean

    write_json(out_path, clean(result))
    return result
