"""Reverse-diffusion samplers with per-chain noise: ancestral DDPM ("fixed large") and DDIM.

Both samplers walk a decreasing list of timestep indices ``seq = [t_K, …, t_1]`` (0-based, see
:meth:`NoiseSchedule.timesteps`) and call ``eps_fn(x_t, t)`` → ε̂_θ(x_t, t) once per step, so the
number of network evaluations of a chain is ``len(seq)``. The conditioning (LMI maps or none)
lives inside ``eps_fn``; the samplers know nothing about it.

Symbols: ᾱ_t = ``abar[t]``, ᾱ_prev = ᾱ of the next index in ``seq`` (1 after the last);
β'_t = 1 − ᾱ_t / ᾱ_prev and α'_t = 1 − β'_t are the step's own β and α (equal to β_t and α_t when
``seq`` is every index, the authors' 1000-step chain).

Why not MONAI's ``DDPMScheduler.step`` / ``DDIMScheduler.step``: they draw one noise tensor for
the whole batch from one generator, whereas here every chain (slice × sample) owns a
``torch.Generator`` seeded from its slice's seed, so a slice's translation does not depend on
which other slices share its batch or shard. The schedule (β, ᾱ) is MONAI's.

No host↔device copy happens inside the loops: the per-step coefficients are moved to the device
once before the loop and indexed there, and each chain's generator lives on the device.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from lmid.diffusion.schedule import NoiseSchedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def chain_seed(slice_seed: int, sample: int) -> int:
    """Seed of chain ``sample`` of a slice: a hash of (slice seed, sample index)."""
    state = np.random.SeedSequence([int(slice_seed) & 0xFFFFFFFFFFFFFFFF, int(sample)]).generate_state(2, np.uint32)
    return int(state[0]) | (int(state[1] & 0x7FFFFFFF) << 32)


class ChainNoise:
    """One generator per chain; ``randn`` stacks one draw per chain, in chain order."""

    def __init__(self, seeds: Sequence[int], device: torch.device):
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype=torch.float32) -> torch.Tensor:
        return torch.stack(
            [torch.randn(tuple(shape), generator=g, device=self.device, dtype=dtype) for g in self.generators]
        )


def _to_device(values: Sequence[float], device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32, device=device)


def _progress(steps: int, progress) -> object:
    if progress is None:
        return None
    return progress(total=steps)


def ancestral_coefficients(schedule: NoiseSchedule, seq: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-step float64 coefficients of :func:`ancestral` for the timestep sequence ``seq``.

    ``eps`` = β'_t / √(1 − ᾱ_t), ``scale`` = 1 / √α'_t, ``var`` = σ_t² (fixed large).
    """
    seq = [int(t) for t in seq]
    abar = np.array([schedule.abar(t) for t in seq])
    abar_prev = np.array([schedule.abar(t) for t in seq[1:]] + [1.0])
    beta = 1.0 - abar / abar_prev  # β'_t
    var = beta.copy()
    # Last step: the posterior variance of the step before it (0 for a one-step chain).
    var[-1] = beta[-2] * (1.0 - abar[-1]) / (1.0 - abar[-2]) if len(seq) >= 2 else 0.0
    return {
        "eps": beta / np.sqrt(1.0 - abar),
        "scale": 1.0 / np.sqrt(1.0 - beta),
        "var": var,
        "beta": beta,
        # Clipped form (Ho et al. eq. 7): μ = c_x0 · clip(x̂_0) + c_xt · x_t, x̂_0 from ε̂.
        "x0_x": 1.0 / np.sqrt(abar),
        "x0_eps": np.sqrt(1.0 - abar) / np.sqrt(abar),
        "c_x0": np.sqrt(abar_prev) * beta / (1.0 - abar),
        "c_xt": np.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar),
    }


@torch.no_grad()
def ancestral(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    seq: Sequence[int],
    noise: ChainNoise,
    progress=None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """DDPM ancestral sampling with the authors' "fixed large" variance; returns x_0 clamped to [0, 1].

    ``x`` is x_{seq[0]}. For each step (t → t_prev):

    1. ε̂ = ε_θ(x_t, t)                                     (conditioning inside ``eps_fn``)
    2. μ = (x_t − β'_t / √(1 − ᾱ_t) · ε̂) / √α'_t            (Ho et al. eq. 11, ε-form, no x̂_0 clip:
       the released code), or with ``clip_x0`` the posterior mean of the clipped estimate,
       x̂_0 = clip((x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t, 0, 1) and
       μ = √ᾱ_prev β'_t / (1 − ᾱ_t) · x̂_0 + √α'_t (1 − ᾱ_prev) / (1 − ᾱ_t) · x_t   (Ho et al. eq. 7).
       Both are the same μ when nothing is clipped. Without the clip an ε̂ error at large t is
       carried into x_t unbounded; the clip keeps every step's target inside the image range.
    3. σ² = β'_t (fixed large); on the last step the posterior variance of the step before,
       β̃ = β'_{t_2} (1 − ᾱ_{t_1}) / (1 − ᾱ_{t_2}) — for the full chain exactly the authors'
       ``append(posterior_variance[1], betas[1:])``
    4. x_prev = μ + σ z,  z ~ N(0, I) from each chain's generator (the authors add noise on the
       last step too)
    5. after the last step: clamp to [0, 1].
    """
    seq = [int(t) for t in seq]
    coef = ancestral_coefficients(schedule, seq)
    c_eps = _to_device(coef["eps"], x.device)
    c_scale = _to_device(coef["scale"], x.device)
    c_std = _to_device(np.sqrt(coef["var"]), x.device)  # σ_t
    c = {k: _to_device(coef[k], x.device) for k in ("x0_x", "x0_eps", "c_x0", "c_xt")}
    t_all = torch.as_tensor(seq, dtype=torch.long, device=x.device)
    bar = _progress(len(seq), progress)
    shape = x.shape[1:]
    for i in range(len(seq)):
        t = t_all[i].expand(x.shape[0])
        eps = eps_fn(x, t).float()  # step 1
        if clip_x0:  # step 2, clipped
            x0 = (x * c["x0_x"][i] - eps * c["x0_eps"][i]).clamp(0.0, 1.0)
            mean = c["c_x0"][i] * x0 + c["c_xt"][i] * x
        else:  # step 2, as released
            mean = (x - c_eps[i] * eps) * c_scale[i]
        x = mean + c_std[i] * noise.randn(shape, x.dtype)  # steps 3-4
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return x.clamp(0.0, 1.0)  # step 5


@torch.no_grad()
def ddim(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    seq: Sequence[int],
    noise: ChainNoise,
    eta: float = 0.0,
    progress=None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) over ``seq``; returns x_0 clamped to [0, 1].

    For each step (t → t_prev):

    1. ε̂ = ε_θ(x_t, t)
    2. x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t, clamped to [0, 1] (images live in [0, 1])
    3. σ_t = η √((1 − ᾱ_prev) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_prev)
    4. x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ_t²) ε̂ + σ_t z   (z only drawn when η > 0)

    After the last step (ᾱ_prev = 1) x_prev = x̂_0.
    """
    seq = [int(t) for t in seq]
    abar = np.array([schedule.abar(t) for t in seq])
    abar_prev = np.array([schedule.abar(t) for t in seq[1:]] + [1.0])
    sigma = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar)) * np.sqrt(1.0 - abar / abar_prev)
    c_x0_x = _to_device(1.0 / np.sqrt(abar), x.device)  # 1 / √ᾱ_t
    c_x0_e = _to_device(np.sqrt(1.0 - abar) / np.sqrt(abar), x.device)  # √(1 − ᾱ_t) / √ᾱ_t
    c_prev = _to_device(np.sqrt(abar_prev), x.device)  # √ᾱ_prev
    c_dir = _to_device(np.sqrt(np.clip(1.0 - abar_prev - sigma**2, 0.0, None)), x.device)
    c_sigma = _to_device(sigma, x.device)
    t_all = torch.as_tensor(seq, dtype=torch.long, device=x.device)
    stochastic = eta > 0
    bar = _progress(len(seq), progress)
    shape = x.shape[1:]
    for i in range(len(seq)):
        t = t_all[i].expand(x.shape[0])
        eps = eps_fn(x, t).float()  # step 1
        x0 = (x * c_x0_x[i] - eps * c_x0_e[i]).clamp(0.0, 1.0)  # step 2
        x = c_prev[i] * x0 + c_dir[i] * eps  # step 4, deterministic part
        if stochastic:
            x = x + c_sigma[i] * noise.randn(shape, x.dtype)  # step 3-4, σ_t z
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return x.clamp(0.0, 1.0)


def run(
    kind: str,
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    seq: Sequence[int],
    noise: ChainNoise,
    eta: float = 0.0,
    progress=None,
    clip_x0: bool = False,
) -> torch.Tensor:
    if kind == "ancestral":
        return ancestral(eps_fn, schedule, x, seq, noise, progress=progress, clip_x0=clip_x0)
    if kind == "ddim":
        return ddim(eps_fn, schedule, x, seq, noise, eta=eta, progress=progress)
    raise ValueError(f"unknown sampler kind {kind!r} (ancestral | ddim)")


def noised(schedule: NoiseSchedule, image: torch.Tensor, t: int, noise: ChainNoise) -> torch.Tensor:
    """x_t = √ᾱ_t · image + √(1 − ᾱ_t) · z with z from each chain's generator."""
    a = schedule.abar(t)
    return float(np.sqrt(a)) * image + float(np.sqrt(1.0 - a)) * noise.randn(image.shape[1:], image.dtype)
