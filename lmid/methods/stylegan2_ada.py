"""StyleGAN2-ADA's adaptive discriminator augmentation (Karras et al. 2020), for grey MRI slices.

:class:`AdaController` steers the augmentation probability p from the sign of D's output on
reals; :class:`AugmentPipe` applies, each with probability p per sample, the geometric and
brightness/contrast augmentations that make sense for one-channel slices. The training loop that
uses them is in :mod:`lmid.methods.stylegan2`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------- ADA controller
class AdaController:
    """Steers the augmentation probability p so that r_t = E[sign(D(real))] approaches the target.

    Call :meth:`accumulate` with D's logits on (augmented) reals every step and :meth:`step`
    once per training step; every ``interval`` steps p moves by
    ``sign(r_t − target) · batch_size · interval / (kimg · 1000)`` and is clamped to [0, 1].
    """

    def __init__(
        self, target: float = 0.6, interval: int = 4, kimg: float = 500.0, batch_size: int = 32, p: float = 0.0
    ):
        self.target, self.interval, self.kimg, self.batch_size = target, interval, kimg, batch_size
        self.p = float(p)
        self.rt = float("nan")  # last r_t
        self._sum = 0.0
        self._count = 0
        self._steps = 0

    @property
    def adjust_step(self) -> float:
        """|Δp| of one adjustment."""
        return self.batch_size * self.interval / (self.kimg * 1000.0)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        s = torch.sign(real_logits.detach().float())
        self._sum += float(s.sum())
        self._count += s.numel()

    def step(self) -> float:
        """Count one training step; adjust p when ``interval`` steps have passed. Returns p."""
        self._steps += 1
        if self._steps % self.interval == 0 and self._count:
            self.rt = self._sum / self._count
            delta = math.copysign(self.adjust_step, self.rt - self.target) if self.rt != self.target else 0.0
            self.p = min(1.0, max(0.0, self.p + delta))
            self._sum, self._count = 0.0, 0
        return self.p

    def state_dict(self) -> dict:
        return {"p": self.p, "rt": self.rt, "sum": self._sum, "count": self._count, "steps": self._steps}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.rt = float(state["p"]), float(state["rt"])
        self._sum, self._count, self._steps = float(state["sum"]), int(state["count"]), int(state["steps"])


# ----------------------------------------------------------------------------- augmentations
class AugmentPipe:
    """ADA's geometric + brightness/contrast augmentations for one-channel images in [-1, 1]."""

    translate_max = 0.125
    scale_std = 0.2
    rotate_max_deg = 15.0
    brightness_std = 0.2
    contrast_std = 0.5

    def __call__(self, x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
        if p <= 0:
            return x
        b, _, h, w = x.shape
        dev = x.device

        def coin() -> torch.Tensor:  # per-sample Bernoulli(p) as 0/1 floats (CPU generator)
            return (torch.rand(b, generator=gen) < p).float()

        # Geometric: 3×3 matrices in normalised coordinates, output → input (all symmetric).
        eye = torch.eye(3).expand(b, 3, 3)
        mat = eye.clone()
        flip = 1 - 2 * coin() * (torch.rand(b, generator=gen) < 0.5).float()  # x-flip
        mat = mat @ _scale(flip, torch.ones(b))
        k = coin() * torch.randint(4, (b,), generator=gen).float()  # 90° rotations
        mat = mat @ _rotate(k * (math.pi / 2))
        on = coin()
        tx = torch.round((torch.rand(b, generator=gen) * 2 - 1) * self.translate_max * w) * on
        ty = torch.round((torch.rand(b, generator=gen) * 2 - 1) * self.translate_max * h) * on
        mat = mat @ _translate(2 * tx / w, 2 * ty / h)  # integer pixels
        s = torch.exp2(torch.randn(b, generator=gen) * self.scale_std * coin())
        mat = mat @ _scale(s, s)
        ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(self.rotate_max_deg) * coin()
        mat = mat @ _rotate(ang)
        grid = F.affine_grid(mat[:, :2].to(dev, x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # Colour (grey): brightness then contrast about mid-grey 0.
        bright = torch.randn(b, generator=gen) * self.brightness_std * coin()
        contrast = torch.exp2(torch.randn(b, generator=gen) * self.contrast_std * coin())
        return (x + bright.to(dev, x.dtype)[:, None, None, None]) * contrast.to(dev, x.dtype)[:, None, None, None]


def _scale(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = torch.zeros(len(sx), 3, 3)
    m[:, 0, 0], m[:, 1, 1], m[:, 2, 2] = sx, sy, 1
    return m


def _rotate(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    m = torch.zeros(len(theta), 3, 3)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1], m[:, 2, 2] = c, -s, s, c, 1
    return m


def _translate(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3).repeat(len(tx), 1, 1)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m
