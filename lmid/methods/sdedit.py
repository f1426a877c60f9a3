"""SDEdit (Meng et al. 2022): perturb the source with noise, then denoise with a target-only DDPM.

Training: the same trainer as LMIDiffusion, unconditional (1 input channel), on target slices
only (:class:`~lmid.diffusion.trainer.DiffusionTrainer`).

Translation of a source slice y, repeated K = ``sdedit.repeats`` times as in the reference code
(each repeat re-noises the previous result):

1. x_{t0} = √ᾱ_{t0} y + √(1 − ᾱ_{t0}) z           (t0 = the chosen level·T, 0-based index)
2. denoise from t0 to 0: ancestral DDPM (fixed large variance) over every index, or
   ``kind: ddim`` with ``steps`` DDIM steps (η = 0)
3. y ← the result clamped to [0, 1]; back to 1 until K repeats are done.

Choosing t0: at the end of :meth:`SDEdit.train`, ``val_slices`` VALIDATION slices (never test)
are translated at every level of ``sdedit.t0_grid``; the level with the best mean SSIM
(scikit-image, data range 1, whole slice) against the real target slice is stored in ``model.pt``
with the whole sweep (t0 → SSIM, PSNR), and :meth:`SDEdit.translate` uses it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lmid.config import Params, SdeditParams
from lmid.data.slices import SliceSet
from lmid.diffusion import sampler as samplers
from lmid.diffusion.model import DiffusionModel, translate_batched
from lmid.diffusion.trainer import DiffusionTrainer
from lmid.errors import LmidError
from lmid.methods.base import Method, TrainingData, Translation

log = logging.getLogger(__name__)

SEED_OFFSET = 202
#: Seeds of the validation slices used to choose t0 (fixed, independent of the test seeds).
VAL_SEED_OFFSET = 4243
#: Used when there is no validation slice to choose from: the SDEdit reference's default 0.4.
DEFAULT_T0 = 0.4


def sdedit_translate(
    model: DiffusionModel,
    source: np.ndarray,
    seeds: np.ndarray,
    sp: SdeditParams,
    t0: float,
    samples: int,
    device: torch.device,
) -> Translation:
    if model.in_channels != 1:
        raise LmidError(f"SDEdit needs an unconditional 1-channel model, this one has {model.in_channels} channels")
    schedule = model.schedule
    start = schedule.index_of_fraction(t0)
    seq = schedule.timesteps(start, sp.steps if sp.kind == "ddim" else start + 1)
    eps_fn = model.eps_fn()

    def one_batch(src: torch.Tensor, noise: samplers.ChainNoise) -> torch.Tensor:
        y = src
        for _ in range(sp.repeats):
            x = samplers.noised(schedule, y, start, noise)  # step 1
            y = samplers.run(sp.kind, eps_fn, schedule, x, seq, noise, eta=0.0)  # steps 2-3
        return y

    image, mean, std = translate_batched(source, seeds, samples, sp.batch_size, device, one_batch)
    info = {"t0": t0, "t0_index": start, "sampler": sp.kind, "steps": len(seq), "repeats": sp.repeats}
    return Translation(image=image, std=std, mean=mean, nfe=len(seq) * sp.repeats * samples, info=info)


def choose_t0(
    model: DiffusionModel, val: SliceSet, sp: SdeditParams, seed: int, device: torch.device
) -> tuple[float, list[dict]]:
    """Sweep ``sp.t0_grid`` on validation slices; return (best t0 by SSIM, the sweep)."""
    if val is None or len(val) == 0:
        t0 = DEFAULT_T0 if DEFAULT_T0 in sp.t0_grid else sorted(sp.t0_grid)[len(sp.t0_grid) // 2]
        log.warning("sdedit: no validation slices; t0 = %g chosen without a sweep", t0)
        return t0, []
    n = len(val) if sp.val_slices == 0 else min(sp.val_slices, len(val))
    # An even spread over the validation split rather than its first slices.
    idx = np.unique(np.linspace(0, len(val) - 1, n).round().astype(int))
    source, target = val.source[idx], np.clip(val.target[idx], 0.0, 1.0)
    seeds = np.random.default_rng(seed + VAL_SEED_OFFSET).integers(0, 2**31 - 1, size=len(idx))
    sweep = []
    for t0 in sp.t0_grid:
        out = sdedit_translate(model, source, seeds, sp, float(t0), 1, device).image
        ssim = [structural_similarity(t, o, data_range=1.0) for t, o in zip(target, out)]
        psnr = [peak_signal_noise_ratio(t, o, data_range=1.0) for t, o in zip(target, out)]
        sweep.append(
            {"t0": float(t0), "ssim": float(np.mean(ssim)), "psnr": float(np.mean(psnr)), "slices": int(len(idx))}
        )
        log.info(
            "sdedit: t0 = %g  SSIM %.4f  PSNR %.2f dB on %d validation slices",
            t0,
            sweep[-1]["ssim"],
            sweep[-1]["psnr"],
            len(idx),
        )
    best = max(sweep, key=lambda r: r["ssim"])
    if len(sweep) > 2 and best["t0"] in (min(sp.t0_grid), max(sp.t0_grid)):
        # The grid does not bracket the optimum: the best level may lie outside it.
        log.warning(
            "sdedit: the best t0 (%g) is at the edge of sdedit.t0_grid %s; widen the grid", best["t0"], list(sp.t0_grid)
        )
    return best["t0"], sweep


class SDEdit(Method):
    name = "sdedit"
    description = "unconditional DDPM on target slices; source noised to t0 (chosen on validation) and denoised"

    def train(self, params: Params, data: TrainingData, val: SliceSet, out_dir: Path, device: torch.device) -> dict:
        if data.target is None:
            raise LmidError("sdedit needs the target training slices")
        trainer = DiffusionTrainer(
            params.diffusion, seed=params.seed + SEED_OFFSET, out_dir=Path(out_dir), device=device, method=self.name
        )
        info = trainer.fit(data.target)
        model = trainer.inference_model()
        sp = params.sdedit
        t0, sweep = choose_t0(model, val, sp, params.seed, device)
        model.meta.update({"t0": t0, "t0_sweep": sweep})
        model.save(Path(out_dir) / "model.pt")
        start = model.schedule.index_of_fraction(t0)
        steps = len(model.schedule.timesteps(start, sp.steps if sp.kind == "ddim" else start + 1))
        grid = sorted(float(g) for g in sp.t0_grid)
        info.update(
            {
                "t0": t0,
                "t0_sweep": sweep,
                "nfe_per_slice": steps * sp.repeats,
                "sampler": sp.kind,
                # Whether the chosen level lies inside the grid, i.e. the sweep brackets its optimum.
                "t0_bracketed": bool(sweep) and len(grid) > 2 and grid[0] < t0 < grid[-1],
            }
        )
        return info

    def load(self, params: Params, model_path: Path, device: torch.device) -> DiffusionModel:
        if model_path is None:
            raise LmidError("sdedit: translate needs --model (the trained model.pt)")
        model = DiffusionModel.load(
            Path(model_path), device, method=self.name, mixed_precision=params.diffusion.train.mixed_precision
        )
        if "t0" not in model.meta:
            raise LmidError(f"{model_path}: no chosen t0 stored (train sdedit again)")
        return model

    def translate(
        self,
        params: Params,
        model: DiffusionModel,
        source: np.ndarray,
        seeds: np.ndarray,
        device: torch.device,
        samples: int = 1,
    ) -> Translation:
        return sdedit_translate(model, source, seeds, params.sdedit, float(model.meta["t0"]), samples, device)
