"""Denoising diffusion on target slices: schedule, U-Net, trainer, samplers.

* :mod:`~lmid.diffusion.schedule` — the DDPM schedule (β_t, ᾱ_t), q(x_t | x_0), timestep grids;
* :mod:`~lmid.diffusion.unet` — MONAI's ``DiffusionModelUNet`` configured from ``diffusion.unet``;
* :mod:`~lmid.diffusion.conditioning` — LMIDiffusion's ``[x_t, LMI(s, x_t), LMI(s, s)]`` input;
* :mod:`~lmid.diffusion.trainer` — one training loop, unconditional (SDEdit) or LMI-conditioned;
* :mod:`~lmid.diffusion.sampler` — ancestral DDPM and DDIM with per-slice noise generators;
* :mod:`~lmid.diffusion.model` — ``model.pt`` and batched translation.
"""

from lmid.diffusion.model import DiffusionModel, translate_batched
from lmid.diffusion.schedule import NoiseSchedule
from lmid.diffusion.trainer import DiffusionTrainer, LmiDiffusionTrainer
from lmid.diffusion.unet import build_unet

__all__ = [
    "DiffusionModel",
    "DiffusionTrainer",
    "LmiDiffusionTrainer",
    "NoiseSchedule",
    "build_unet",
    "translate_batched",
]
