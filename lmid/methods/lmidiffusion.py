"""LMIDiffusion: a DDPM trained on target slices only, steered at sampling time by LMI maps.

Training (:class:`~lmid.diffusion.trainer.LmiDiffusionTrainer`): target slices x_0 only, network
input ``[x_t, LMI(x_0, x_{t+1}), LMI(x_0, x_0)]``, ε-MSE (docs/method.md §4).

Translation of a source slice s (``lmidiffusion.sampler``):

* ``kind: ancestral``, ``start: noise`` — the authors' sampler: x_{T−1} ~ N(0, I), then every one of
  the T ancestral DDPM steps with the "fixed large" variance, the network seeing
  ``[x_t, LMI(s, x_t), LMI(s, s)]`` (LMI(s, x_t) recomputed each step, LMI(s, s) once), output
  clamped to [0, 1]. ``steps < T`` walks an evenly spaced sub-sequence (respaced DDPM).
  ``clip_x0`` clips x̂_0 inside the posterior mean (Ho et al.'s sampler; the released one does not).
* ``kind: ddim`` — ``steps`` DDIM steps (η = ``eta``) with the same conditioning.
* ``start: source`` — instead of pure noise, start from the source noised to ``start_t``·T.
* ``samples > 1`` — independent chains per slice; the image is chain 0 (what is scored: a mean of
  chains is blurrier than any one sample), ``std`` the per-pixel standard deviation over the chains
  (an uncertainty map).

Slices are processed ``sampler.batch_size`` chains at a time; each chain's noise comes from its
own generator seeded from the slice's seed, so results do not depend on batching or sharding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmid.config import LmiParams, Params, SamplerParams
from lmid.data.slices import SliceSet
from lmid.diffusion import sampler as samplers
from lmid.diffusion.conditioning import LmiGuide
from lmid.diffusion.model import DiffusionModel, translate_batched
from lmid.diffusion.trainer import LmiDiffusionTrainer
from lmid.errors import LmidError
from lmid.methods.base import Method, TrainingData, Translation

#: Added to ``params.seed`` for this method's training generator.
SEED_OFFSET = 101


def sampler_plan(model: DiffusionModel, sp: SamplerParams) -> tuple[int, list[int]]:
    """(start index, timestep sequence) for the sampler settings."""
    schedule = model.schedule
    start = schedule.T - 1 if sp.start == "noise" else schedule.index_of_fraction(sp.start_t)
    steps = sp.steps if sp.kind == "ddim" else min(sp.steps, start + 1)
    return start, schedule.timesteps(start, steps, sp.spacing)


def lmi_translate(
    model: DiffusionModel,
    source: np.ndarray,
    seeds: np.ndarray,
    sp: SamplerParams,
    samples: int,
    device: torch.device,
    progress=None,
) -> Translation:
    """LMI-conditioned translation of (N, H, W) source slices with a loaded model."""
    if model.in_channels != 3:
        raise LmidError(f"LMIDiffusion needs a 3-channel model, this one has {model.in_channels} input channel(s)")
    lmi = LmiParams.model_validate(model.meta.get("lmi", {}))
    start, seq = sampler_plan(model, sp)
    schedule = model.schedule

    def one_batch(src: torch.Tensor, noise: samplers.ChainNoise) -> torch.Tensor:
        guide = LmiGuide(src, lmi)  # LMI(s, s) once per batch
        if sp.start == "noise":
            x = noise.randn(src.shape[1:])  # x_{T−1} ~ N(0, I)
        else:
            x = samplers.noised(schedule, src, start, noise)  # x_start = √ᾱ s + √(1−ᾱ) z
        return samplers.run(sp.kind, model.eps_fn(guide), schedule, x, seq, noise, eta=sp.eta, clip_x0=sp.clip_x0)

    image, mean, std = translate_batched(source, seeds, samples, sp.batch_size, device, one_batch, progress=progress)
    info = {
        "sampler": sp.kind,
        "steps": len(seq),
        "spacing": sp.spacing,
        "start": sp.start,
        "start_index": start,
        "eta": sp.eta,
        "clip_x0": sp.clip_x0,
        "samples": samples,
        "lmi_mode": lmi.mode,
    }
    return Translation(image=image, std=std, mean=mean, nfe=len(seq) * samples, info=info)


class LmiDiffusion(Method):
    name = "lmidiffusion"
    description = "DDPM trained on target slices only, conditioned on local mutual information with the source"

    def train(self, params: Params, data: TrainingData, val: SliceSet, out_dir: Path, device: torch.device) -> dict:
        if data.target is None:
            raise LmidError("lmidiffusion needs the target training slices")
        trainer = LmiDiffusionTrainer(
            params.diffusion, params.lmi, seed=params.seed + SEED_OFFSET, out_dir=Path(out_dir), device=device
        )
        info = trainer.fit(data.target)
        model = trainer.inference_model()
        model.save(Path(out_dir) / "model.pt")
        # The sampler is a translation setting (network evaluations are counted per translated slice).
        info.update({"lmi_mode": params.lmi.mode})
        return info

    def load(self, params: Params, model_path: Path, device: torch.device) -> DiffusionModel:
        if model_path is None:
            raise LmidError("lmidiffusion: translate needs --model (the trained model.pt)")
        return DiffusionModel.load(
            Path(model_path), device, method=self.name, mixed_precision=params.diffusion.train.mixed_precision
        )

    def translate(
        self,
        params: Params,
        model: DiffusionModel,
        source: np.ndarray,
        seeds: np.ndarray,
        device: torch.device,
        samples: int = 1,
    ) -> Translation:
        return lmi_translate(model, source, seeds, params.lmidiffusion.sampler, samples, device)
