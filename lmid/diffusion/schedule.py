"""The DDPM noise schedule and the timestep grids the samplers walk.

Symbols (Ho et al. 2020, "DDPM"):

* ``betas[t]``            → β_t, linear from ``beta_start`` to ``beta_end`` over t = 0 … T−1
* ``alphas[t]``           → α_t = 1 − β_t
* ``alphas_cumprod[t]``   → ᾱ_t = ∏_{s ≤ t} α_s
* forward process         → x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε,  ε ~ N(0, I)   (eq. 4)

β is built here in float64 (``np.linspace``) and ᾱ_t accumulated in float64; the tensors used on
the device are float32 copies. MONAI's :class:`~monai.networks.schedulers.DDPMScheduler`
(``linear_beta``) is built beside it for one reason: to check, at construction, that this is the
schedule the MONAI ecosystem means by the same parameters (its float32 β agree to 1e-9; its
float32 ᾱ drifts by ~1e-6 relative at t = 999, which is why it is not used directly). Timestep indices are 0-based as in the authors'
code: index ``T − 1`` is the noisiest level.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.schedulers import DDPMScheduler

from lmid.config import ScheduleParams


#: Timestep spacings of :meth:`NoiseSchedule.timesteps` for few-step samplers.
SPACINGS = ("uniform", "quad", "trailing")


class NoiseSchedule:
    """β_t, ᾱ_t and the forward process q(x_t | x_0) for one :class:`ScheduleParams`."""

    def __init__(self, params: ScheduleParams | None = None):
        params = params or ScheduleParams()
        if not params.beta_start < params.beta_end:
            raise ValueError(f"beta_start ({params.beta_start}) must be below beta_end ({params.beta_end})")
        self.params = params
        self.T = int(params.timesteps)
        # Only a cross-check (module docstring); fixed_large and ε-prediction are the authors' choices.
        self.monai = DDPMScheduler(
            num_train_timesteps=self.T,
            schedule="linear_beta",
            beta_start=params.beta_start,
            beta_end=params.beta_end,
            variance_type="fixed_large",
            clip_sample=False,
            prediction_type="epsilon",
        )
        # Recompute β in float64 from the same definition (MONAI's float32 linspace differs by
        # < 1e-9); everything derived from it is exact to float64 precision.
        self.betas = np.linspace(params.beta_start, params.beta_end, self.T, dtype=np.float64)
        if not np.allclose(self.betas, self.monai.betas.double().numpy(), rtol=1e-5, atol=1e-9):
            raise AssertionError("MONAI's linear_beta schedule differs from linspace(beta_start, beta_end, T)")
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self._device_cache: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------------------ helpers
    def abar(self, t: int) -> float:
        """ᾱ_t for an index t in [−1, T−1]; ᾱ_{−1} = 1 (the clean image)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def alphas_cumprod_on(self, device: torch.device) -> torch.Tensor:
        """ᾱ as a float32 tensor on ``device`` (cached: one host→device copy per device)."""
        key = (str(device),)
        if key not in self._device_cache:
            self._device_cache[key] = torch.as_tensor(self.alphas_cumprod, dtype=torch.float32, device=device)
        return self._device_cache[key]

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, with one t per batch element."""
        abar = self.alphas_cumprod_on(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps

    def index_of_fraction(self, fraction: float) -> int:
        """Timestep index of the noise level ``fraction``·T (SDEdit's t0, the source start).

        ``fraction = 0.4`` with T = 1000 gives index 399, from which 400 ancestral steps lead to
        x_0, as in the SDEdit reference (``a[total_noise_levels - 1]``).
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"noise level fraction must be in (0, 1], got {fraction}")
        return int(min(self.T, max(1, round(fraction * self.T)))) - 1

    def timesteps(self, start: int, steps: int, spacing: str = "uniform") -> list[int]:
        """Decreasing timestep indices from ``start`` with at most ``steps`` entries.

        ``steps ≥ start + 1`` gives every index (the full ancestral chain). Fewer steps:

        * ``uniform``: evenly spaced from ``start`` to 0 (DDIM / respaced DDPM);
        * ``quad``: t_k = (k / (S − 1))² · start, dense at small t where the LMI map of x_t carries
          information (the DDIM reference's quadratic skip, scaled to end at ``start``);
          indices that round together are kept once, so it can return fewer than S;
        * ``trailing``: start, start − Δ, … with Δ = (start + 1) / S, ending at Δ − 1 rather than 0
          (Lin et al. 2024); the last DDIM step then jumps straight to x̂_0.
        """
        if not 0 <= start < self.T:
            raise ValueError(f"start index {start} outside 0..{self.T - 1}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        if steps >= start + 1:
            return list(range(start, -1, -1))
        if steps == 1:
            return [start]
        k = np.arange(steps, dtype=np.float64) / (steps - 1)
        if spacing == "uniform":
            grid = np.round(k * start)
        elif spacing == "quad":
            grid = np.round(k**2 * start)
        else:
            delta = (start + 1) / steps
            grid = np.round((start + 1) - np.arange(steps) * delta) - 1
        grid = np.unique(grid.astype(np.int64))
        return [int(t) for t in grid[::-1]]

    def fixed_large_variance(self) -> np.ndarray:
        """The authors' "fixed large" variance per index: β_t, with index 0 replaced by the
        posterior variance β̃_1 = β_1 (1 − ᾱ_0) / (1 − ᾱ_1) (Ho et al.'s ``fixedlarge``)."""
        var = self.betas.copy()
        if self.T > 1:
            var[0] = self.betas[1] * (1.0 - self.alphas_cumprod[0]) / (1.0 - self.alphas_cumprod[1])
        return var

    def state(self) -> dict:
        return self.params.model_dump(mode="json")
