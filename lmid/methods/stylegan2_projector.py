"""GAN inversion for the StyleGAN2-ADA baseline: the reference projector with cross-modal distances.

See :mod:`lmid.methods.stylegan2` for the projector's steps. Here: the noise regularisation, the lr
ramp, w̄ and σ_w, and :func:`project` itself; the distances it minimises are in
:mod:`lmid.methods.stylegan2_distances`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmid.config import Params
from lmid.methods.stylegan2_distances import inversion_distance
from lmid.networks.stylegan2 import Generator
from lmid.progress import progress_disabled

#: Reference projector constants.
INVERT_NOISE_FACTOR = 0.05
INVERT_NOISE_RAMP = 0.75
INVERT_LR_RAMPDOWN = 0.25
INVERT_LR_RAMPUP = 0.05
INVERT_BATCH = 32


def _noise_regularisation(noise: list[torch.Tensor]) -> torch.Tensor:
    """Per-slice squared one-pixel autocorrelations of each noise map and its pyramid → (N,)."""
    reg = 0.0
    for v in noise:
        while True:
            reg = reg + (v * torch.roll(v, 1, dims=3)).mean(dim=(1, 2, 3)) ** 2
            reg = reg + (v * torch.roll(v, 1, dims=2)).mean(dim=(1, 2, 3)) ** 2
            if v.shape[2] <= 8:
                break
            v = F.avg_pool2d(v, 2)
    return reg


def invert_lr_ramp(t: float) -> float:
    """The projector's lr multiplier at progress t ∈ [0, 1): warm-up then cosine ramp-down."""
    ramp = min(1.0, (1.0 - t) / INVERT_LR_RAMPDOWN)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return ramp * min(1.0, t / INVERT_LR_RAMPUP)


def w_statistics(g: Generator, samples: int, seed: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """Mean w̄ (w_dim,) and σ_w = sqrt(E|w − w̄|²) of ``samples`` mapped z."""
    gen = torch.Generator().manual_seed(seed)
    ws = []
    with torch.no_grad():
        for i in range(0, samples, 4096):
            z = torch.randn(min(4096, samples - i), g.z_dim, generator=gen).to(device)
            ws.append(g.mapping(z).float())
    ws = torch.cat(ws)
    w_avg = ws.mean(0)
    w_std = float(((ws - w_avg).square().sum() / samples).sqrt())
    return w_avg, w_std


def project(
    g: Generator,
    source: torch.Tensor,
    seeds: np.ndarray,
    params: Params,
    w_avg: torch.Tensor,
    w_std: float,
    progress: bool = False,
    target_histogram: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Invert a batch of source slices (N, 1, H, W) in [0, 1].

    Returns the images in [0, 1], the final distances (N,) and the mean distance at every step.
    """
    p = params.stylegan2
    n = source.shape[0]
    dev = source.device
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    # Each slice's own noise maps, drawn from its own generator.
    per_slice = [g.synthesis.make_noise(1, gi) for gi in gens]
    noise = [torch.cat([m[k] for m in per_slice]).to(dev).requires_grad_(True) for k in range(len(per_slice[0]))]
    w_opt = w_avg[None].repeat(n, 1).clone().requires_grad_(True)
    opt = torch.optim.Adam([w_opt] + noise, lr=p.invert_lr, betas=(0.9, 0.999))
    lmi_ss = None
    if p.invert_loss == "lmi_mind":
        from lmid.lmi import local_mutual_information

        with torch.no_grad():
            lp = params.lmi
            lmi_ss = (
                local_mutual_information(source, source, mode="exact", window=lp.window, bins=lp.bins, sigma=lp.sigma)
                .mean(dim=(1, 2, 3))
                .clamp_min(1e-6)
            )

    steps = p.invert_steps
    trace = []
    for step in tqdm(range(steps), desc="stylegan2 inversion", disable=not progress or progress_disabled()):
        t = step / steps
        w_noise_scale = w_std * INVERT_NOISE_FACTOR * max(0.0, 1.0 - t / INVERT_NOISE_RAMP) ** 2
        for group in opt.param_groups:
            group["lr"] = p.invert_lr * invert_lr_ramp(t)
        w_noise = torch.stack([torch.randn(g.w_dim, generator=gi) for gi in gens]).to(dev) * w_noise_scale
        ws = (w_opt + w_noise)[:, None].expand(-1, g.num_ws, -1)
        image = (g.synthesis(ws, noise).float() + 1.0) / 2.0
        dist = inversion_distance(source, image, p.invert_loss, params, lmi_ss, target_histogram)
        loss = (dist + p.invert_noise_weight * _noise_regularisation(noise)).sum()
        trace.append(float(dist.detach().mean()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # renormalise every noise map of every slice
            for v in noise:
                v -= v.mean(dim=(1, 2, 3), keepdim=True)
                v *= v.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()
    with torch.no_grad():
        image = (g.synthesis(w_opt[:, None].expand(-1, g.num_ws, -1), noise).float() + 1.0) / 2.0
        dist = inversion_distance(source, image, p.invert_loss, params, lmi_ss, target_histogram)
    return image.clamp(0, 1), dist, trace
