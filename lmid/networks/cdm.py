"""The three networks of CDM, the Cross-conditioned Diffusion Model (Xing et al., MICCAI 2024).

Symbols follow the paper's roles:

* **MRM** (Modality-specific Representation Model), :class:`MaskedAutoencoder`: a convolutional
  encoder–decoder trained to fill in masked patches of target slices y. Its bottleneck, average
  pooled and standardised per sample, is the target-distribution vector z₀ = MRM(y) (``vector_dim``
  entries, 192 in the authors' code).
* **MDN** (Modality-decoupled Diffusion Network), :class:`VectorDenoiser` + :class:`VectorDiffusion`:
  a DDPM over z₀. The denoiser is an MLP of residual blocks with a time embedding that predicts
  z₀ from z_t (x0-prediction); sampling is deterministic DDIM (η = 0).
* **C-UNet** (Cross-conditioned U-Net), :class:`ConditionalUNet`: maps a source slice x to the
  target slice ŷ = C-UNet(x, z). The vector z passes a condition-embedding MLP whose output gives a
  FiLM scale and shift in every residual block.

Everything here is plain PyTorch; training and sampling loops live in :mod:`lmid.methods.cdm`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 where the width allows it (small demo widths), else the largest divisor ≤ 8."""
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


def standardise(v: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample standardisation of a batch of vectors (B, D): zero mean, unit std over D."""
    mean = v.mean(dim=1, keepdim=True)
    std = v.std(dim=1, keepdim=True, unbiased=False)
    return (v - mean) / (std + eps)


# ----------------------------------------------------------------------------------- building blocks
class ResBlock(nn.Module):
    """Pre-activation residual block; with ``cond_dim`` the second norm is FiLM-modulated by a vector.

    FiLM: h ← GroupNorm(h)·(1 + γ(c)) + β(c), with (γ, β) = Linear(c). The linear layer starts at
    zero so that an untrained condition leaves the block a plain residual block.
    """

    def __init__(self, cin: int, cout: int, cond_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.film = None
        if cond_dim is not None:
            self.film = nn.Linear(cond_dim, 2 * cout)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None:
            scale, shift = self.film(cond).chunk(2, dim=1)
            h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


def _down(c: int) -> nn.Module:
    return nn.Conv2d(c, c, 3, stride=2, padding=1)


class _Up(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ------------------------------------------------------------------------------------------- MRM
def random_patch_mask(
    batch: int, height: int, width: int, patch: int, ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, 1, H, W) float mask, 1 on masked pixels: exactly round(ratio·P) of the P patches per sample.

    Drawn on the CPU from ``generator`` so that a run is the same on any device.
    """
    gh, gw = math.ceil(height / patch), math.ceil(width / patch)
    n_patches = gh * gw
    n_masked = min(n_patches - 1, max(1, int(round(ratio * n_patches))))
    order = torch.rand(batch, n_patches, generator=generator).argsort(dim=1)
    grid = torch.zeros(batch, n_patches)
    grid.scatter_(1, order[:, :n_masked], 1.0)
    grid = grid.view(batch, 1, gh, gw)
    full = grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
    return full[:, :, :height, :width]


class MaskedAutoencoder(nn.Module):
    """MRM: masked-patch autoencoder of target slices; its pooled bottleneck is the vector z₀.

    Encoder: stem, then per level one residual block and a stride-2 convolution, then a 1×1
    convolution to ``vector_dim`` channels (the bottleneck, at H / 2^levels). Decoder: the mirror
    image with nearest-neighbour upsampling.
    """

    def __init__(self, channels: tuple[int, ...], vector_dim: int):
        super().__init__()
        channels = tuple(channels)
        self.stem = nn.Conv2d(1, channels[0], 3, padding=1)
        enc, prev = [], channels[0]
        for c in channels:
            enc += [ResBlock(prev, c), _down(c)]
            prev = c
        self.encoder = nn.Sequential(*enc)
        self.to_vector = nn.Sequential(nn.GroupNorm(_groups(prev), prev), nn.SiLU(), nn.Conv2d(prev, vector_dim, 1))
        dec, prev = [nn.Conv2d(vector_dim, channels[-1], 1)], channels[-1]
        for c in reversed(channels):
            dec += [_Up(prev), ResBlock(prev, c)]
            prev = c
        self.decoder = nn.Sequential(*dec)
        self.head = nn.Sequential(nn.GroupNorm(_groups(prev), prev), nn.SiLU(), nn.Conv2d(prev, 1, 3, padding=1))
        self.levels = len(channels)

    def bottleneck(self, y: torch.Tensor) -> torch.Tensor:
        return self.to_vector(self.encoder(self.stem(y)))

    def forward(self, y_masked: torch.Tensor) -> torch.Tensor:
        """Reconstruction of a (masked) target slice, (B, 1, H, W)."""
        return self.head(self.decoder(self.bottleneck(y_masked)))

    def vector(self, y: torch.Tensor) -> torch.Tensor:
        """z₀ = standardise(avgpool(bottleneck(y))): the target-distribution vector, (B, vector_dim)."""
        return standardise(self.bottleneck(y).mean(dim=(2, 3)))


def masked_l2(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_MRM: mean squared error over the masked pixels only."""
    return ((recon - target) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)


# ------------------------------------------------------------------------------------------- MDN
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps t (B,) → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class _MlpBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.time = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        r = self.fc1(F.silu(self.norm1(h))) + self.time(temb)
        r = self.fc2(F.silu(self.norm2(r)))
        return h + r


class VectorDenoiser(nn.Module):
    """MDN denoiser: ẑ₀ = f_θ(z_t, t), an MLP of ``blocks`` residual blocks of width ``hidden``."""

    def __init__(self, vector_dim: int, hidden: int, blocks: int):
        super().__init__()
        self.hidden = hidden
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(vector_dim, hidden)
        self.blocks = nn.ModuleList(_MlpBlock(hidden) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, vector_dim))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = F.silu(self.time_mlp(timestep_embedding(t, self.hidden)))
        h = self.inp(z_t)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(h)


class VectorDiffusion:
    """DDPM noise schedule over vectors, x0-prediction training target and DDIM (η = 0) sampling.

    β_t linear from 1e-4 to 0.02 when T = 1000 (the usual DDPM schedule); for other T both ends are
    scaled by 1000 / T so that ᾱ_T is close to 0 at any T. ``alpha_bar[t]`` → ᾱ_t.
    """

    def __init__(self, timesteps: int):
        self.timesteps = int(timesteps)
        scale = 1000.0 / self.timesteps
        betas = np.linspace(1e-4 * scale, min(0.02 * scale, 0.999), self.timesteps, dtype=np.float64)
        self.alpha_bar = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_t = √ᾱ_t z₀ + √(1 − ᾱ_t) ε."""
        ab = self.alpha_bar.to(z0.device)[t][:, None]
        return ab.sqrt() * z0 + (1 - ab).sqrt() * noise

    def ddim_timesteps(self, steps: int) -> list[int]:
        steps = max(1, min(int(steps), self.timesteps))
        ts = np.linspace(self.timesteps - 1, 0, steps).round().astype(int)
        return list(dict.fromkeys(int(t) for t in ts))  # unique, descending

    @torch.no_grad()
    def ddim_sample(self, model: VectorDenoiser, z_T: torch.Tensor, steps: int) -> torch.Tensor:
        """Deterministic DDIM from z_T ~ N(0, I): returns the final ẑ₀, re-standardised per sample.

        Per step (t → s, s < t): ẑ₀ = f_θ(z_t, t); ε̂ = (z_t − √ᾱ_t ẑ₀) / √(1 − ᾱ_t);
        z_s = √ᾱ_s ẑ₀ + √(1 − ᾱ_s) ε̂. The last step returns ẑ₀ itself. Re-standardising puts the
        sample exactly on the set the MRM vectors live on (zero mean, unit std per sample).
        """
        ab = self.alpha_bar.to(z_T.device)
        ts = self.ddim_timesteps(steps)
        z = z_T
        z0 = z_T
        for i, t in enumerate(ts):
            tt = torch.full((z.shape[0],), t, dtype=torch.long, device=z.device)
            z0 = model(z, tt)
            if i + 1 == len(ts):
                break
            s = ts[i + 1]
            eps = (z - ab[t].sqrt() * z0) / (1 - ab[t]).sqrt().clamp_min(1e-8)
            z = ab[s].sqrt() * z0 + (1 - ab[s]).sqrt() * eps
        return standardise(z0)


# ---------------------------------------------------------------------------------------- C-UNet
class ConditionalUNet(nn.Module):
    """C-UNet: ŷ = U(x, z) with FiLM from the condition embedding e = MLP(z) in every residual block.

    ``channels`` gives one width per resolution level (one residual block per level on the way down
    and up, two in the middle); the image side must be divisible by 2^(levels − 1).
    """

    def __init__(self, channels: tuple[int, ...], vector_dim: int):
        super().__init__()
        channels = tuple(channels)
        cond_dim = 4 * channels[0]
        self.cond_embed = nn.Sequential(nn.Linear(vector_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.stem = nn.Conv2d(1, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = channels[0]
        for i, c in enumerate(channels):
            self.down_blocks.append(ResBlock(prev, c, cond_dim))
            self.downs.append(_down(c) if i + 1 < len(channels) else nn.Identity())
            prev = c
        self.mid = nn.ModuleList([ResBlock(prev, prev, cond_dim), ResBlock(prev, prev, cond_dim)])
        self.up_blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in reversed(range(len(channels))):
            c = channels[i]
            self.up_blocks.append(ResBlock(prev + c, c, cond_dim))
            self.ups.append(_Up(c) if i > 0 else nn.Identity())
            prev = c
        self.head = nn.Sequential(nn.GroupNorm(_groups(prev), prev), nn.SiLU(), nn.Conv2d(prev, 1, 3, padding=1))
        self.levels = len(channels)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        e = self.cond_embed(z)
        h = self.stem(x)
        skips = []
        for block, down in zip(self.down_blocks, self.downs):
            h = block(h, e)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, e)
        for block, up in zip(self.up_blocks, self.ups):
            h = block(torch.cat([h, skips.pop()], dim=1), e)
            h = up(h)
        return self.head(h)
