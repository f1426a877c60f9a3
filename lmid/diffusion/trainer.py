"""ε-prediction DDPM training on target slices, shared by LMIDiffusion and SDEdit.

One loop (docs/method.md §4, the authors' recipe), two small variants:

* :class:`DiffusionTrainer` — unconditional, 1 input channel (SDEdit's DDPM);
* :class:`LmiDiffusionTrainer` — 3 input channels ``[x_t, LMI(x_0, x_{t+1}), LMI(x_0, x_0)]``.

One training step, with x_0 a batch of augmented target slices:

1. t ~ U{0, …, T−1} for half the batch, T−1−t for the other half (antithetic pairs)
2. ε ~ N(0, I); x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε and x_{t+1} likewise with the *same* ε
   (t+1 capped at T−1, as in the authors' code)
3. loss = ‖ε − ε_θ(input(x_0, x_t, x_{t+1}), t)‖² (mean over pixels and batch), or with
   ``loss_weighting: min_snr`` each image's MSE weighted by min(SNR_t, γ) / SNR_t
4. Adam step after clipping the gradient norm (lr from :func:`learning_rate`); EMA of the
   weights with decay :func:`ema_decay` (the EMA weights sample)

The authors' recipe is the default (constant lr, plain MSE, constant EMA decay). The study's
named variants (EMA and lr warm-up, cosine decay, min-SNR-γ) are parameters of
``diffusion.train``; docs/method.md §4 says which the presets use and why.

Reproducibility: every random number (batch indices, augmentation, t, ε) comes from one CPU
``torch.Generator`` seeded with ``seed``; dropout uses the global torch RNG, seeded at start. The
checkpoint stores both states, so N steps + resume + N steps equals 2N steps.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from lmid.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from lmid.clock import TrainClock
from lmid.config import DiffusionParams, LmiParams
from lmid.diffusion.conditioning import lmi_map
from lmid.diffusion.model import DiffusionModel
from lmid.diffusion.schedule import NoiseSchedule
from lmid.diffusion.unet import build_unet, check_image_size
from lmid.networks import autocast, count_parameters, uses_bf16
from lmid.errors import InputFileError, LmidError
from lmid.io import write_text
from lmid.progress import progress_disabled

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "lmid-diffusion-checkpoint"


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """EMA decay after ``step`` optimiser steps (1-based): ``decay``, or with ``warmup``
    min(decay, (1 + step) / (10 + step)), the warm-up of Song & Ermon's and Karras' EMA.

    Without warm-up, at decay 0.999 the step-1,000 average still holds 0.999^1000 = 37 % of the
    initial weights, so early snapshots look worse than the network is.
    """
    return min(float(decay), (1.0 + step) / (10.0 + step)) if warmup else float(decay)


def learning_rate(step: int, tp) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up over ``lr_warmup_steps``,
    then ``lr`` (constant) or a cosine from ``lr`` to ``lr_min_fraction``·lr at ``tp.steps``."""
    base = float(tp.lr)
    warm = int(tp.lr_warmup_steps)
    if step < warm:
        return base * (step + 1) / warm
    if tp.lr_schedule == "constant":
        return base
    span = max(1, int(tp.steps) - warm)
    progress = min(1.0, (step - warm) / span)
    low = base * float(tp.lr_min_fraction)
    return low + 0.5 * (base - low) * (1.0 + math.cos(math.pi * progress))


def min_snr_weights(schedule: NoiseSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR_t, γ) / SNR_t per timestep, SNR_t = ᾱ_t / (1 − ᾱ_t) (Hang et al. 2023, ε-prediction)."""
    abar = torch.as_tensor(np.asarray([schedule.abar(int(k)) for k in t.tolist()], dtype=np.float64))
    snr = abar / (1.0 - abar)
    return (torch.clamp(snr, max=float(gamma)) / snr).float()


class Ema:
    """Exponential moving average of a module's floating tensors: θ̄ ← d·θ̄ + (1 − d)·θ."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else float(decay)
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.detach(), 1.0 - d)
            else:
                self.shadow[k].copy_(v)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with one σ per image (reflect padding)."""
    b = x.shape[0]
    offs = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (offs[None, :] / sigma[:, None].to(x)) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # (B, 2r+1)
    pad_r = min(radius, x.shape[-2] - 1)
    pad_c = min(radius, x.shape[-1] - 1)
    y = x.reshape(1, b, *x.shape[-2:])
    y = F.pad(y, (pad_c, pad_c, 0, 0), mode="reflect")
    y = F.conv2d(y, k[:, None, None, radius - pad_c : radius + pad_c + 1], groups=b)
    y = F.pad(y, (0, 0, pad_r, pad_r), mode="reflect")
    y = F.conv2d(y, k[:, None, radius - pad_r : radius + pad_r + 1, None], groups=b)
    return y.reshape_as(x)


class DiffusionTrainer:
    """Unconditional ε-prediction DDPM on target slices (1 input channel)."""

    in_channels: ClassVar[int] = 1

    def __init__(self, params: DiffusionParams, seed: int, out_dir: Path, device: torch.device, method: str = "sdedit"):
        self.params = params
        self.seed = int(seed)
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.method = method
        self.schedule = NoiseSchedule(params.schedule)
        self.amp = uses_bf16(self.device, params.train.mixed_precision, cpu=True)
        #: Per-step losses of this run (tests read them; the log file holds window means).
        self.step_losses: list[float] = []
        self.net = None
        self.ema: Ema | None = None
        #: Training steps done when :meth:`fit` returned (stored with the inference model).
        self.steps_done: int | None = None

    # ------------------------------------------------------------------ variant hooks
    def network_input(
        self,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        x_next: torch.Tensor,
        idx: torch.Tensor | None = None,
        variant: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What ε_θ sees for a training pair; the unconditional DDPM sees x_t only.

        ``idx`` (training-slice index) and ``variant`` (from :meth:`_augment`) identify x_0 for
        variants that cache work per slice.
        """
        return x_t

    def prepare_data(self, data: torch.Tensor) -> None:
        """Hook called once with the (N, 1, H, W) training tensor before the loop."""

    def meta(self) -> dict:
        """Method-specific facts stored in ``model.pt``."""
        return {}

    # ------------------------------------------------------------------ helpers
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def blur_sigmas(self) -> torch.Tensor | None:
        """The fixed blur levels (``train.blur_levels`` > 0), else None (σ drawn continuously)."""
        tp = self.params.train
        if tp.blur_levels == 0:
            return None
        lo, hi = tp.blur_sigma
        return torch.linspace(lo, hi, tp.blur_levels, dtype=torch.float64).float()

    def _augment(self, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Horizontal flip and random Gaussian blur, each per image with its probability.

        Returns the augmented batch and each image's variant: ``flip · (L + 1) + level`` with
        level 0 for no blur and 1..L for the fixed blur levels, or -1 for a continuously drawn σ
        (a variant that recurs, so its LMI(x_0, x_0) can be cached).
        """
        tp = self.params.train
        b = x0.shape[0]
        # Always draw the same amount of randomness, whatever the probabilities.
        flip = (torch.rand(b, generator=gen) < tp.flip_prob).to(self.device)
        blur = (torch.rand(b, generator=gen) < tp.blur_prob).to(self.device)
        u = torch.rand(b, generator=gen)
        lo, hi = tp.blur_sigma
        levels = self.blur_sigmas()
        if levels is None:
            sigma = (lo + (hi - lo) * u).to(self.device)
            level = torch.full((b,), -1, dtype=torch.long, device=self.device)
        else:
            k = (u * len(levels)).long().clamp_max(len(levels) - 1)
            sigma = levels[k].to(self.device)
            level = (k + 1).to(self.device)
        x = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        blurred = blur & torch.tensor(tp.blur_prob > 0 and hi > 0, device=self.device)
        if bool(blurred.any()):
            radius = max(1, int(math.ceil(3.0 * max(lo, hi))))
            x = torch.where(blurred[:, None, None, None], gaussian_blur(x, sigma.clamp_min(1e-3), radius), x)
        n_var = (len(levels) if levels is not None else 0) + 1
        level = torch.where(blurred, level, torch.zeros_like(level))
        variant = torch.where(level < 0, level, flip.long() * n_var + level)
        return x, variant

    def _timesteps(self, b: int, gen: torch.Generator) -> torch.Tensor:
        """Antithetic pairs: t for the first half, T−1−t for the second (step 1)."""
        T = self.schedule.T
        t = torch.randint(0, T, (b // 2 + 1,), generator=gen)
        return torch.cat([t, T - 1 - t])[:b]

    def _write_log(self, rows: list[tuple[int, float]]) -> None:
        lines = ["step,loss"] + [f"{s},{l:.6g}" for s, l in rows]
        write_text(self.out_dir / "train_log.csv", "\n".join(lines) + "\n")

    def _save_checkpoint(self, step, opt, gen, rows, window=()) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "method": self.method,
            "step": int(step),
            "model": self.net.state_dict(),
            "ema": self.ema.shadow,
            "optimizer": opt.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "log_steps": [int(s) for s, _ in rows],
            "log_losses": [float(v) for _, v in rows],
            # The losses of the log row in progress, so a resumed run averages the same steps.
            "log_window": [float(v) for v in window],
            **self.clock.state(),  # training-loop wall and CPU seconds so far
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(self.checkpoint_path, state)

    def _save_snapshot(self, step: int) -> None:
        """The EMA weights at ``step`` as a loadable ``model.pt`` (for the convergence curve)."""
        net = build_unet(self.params.unet, in_channels=self.in_channels)
        net.load_state_dict({k: v.detach().cpu() for k, v in self.ema.shadow.items()})
        model = DiffusionModel(
            net=net,
            schedule=self.schedule,
            unet=self.params.unet,
            in_channels=self.in_channels,
            method=self.method,
            meta={**self.meta(), "step": int(step), **self.clock.state()},
            mixed_precision=self.params.train.mixed_precision,
        )
        model.save(self.out_dir / "snapshots" / f"step{int(step):07d}.pt")

    # ------------------------------------------------------------------ training
    def fit(self, images: np.ndarray, stop_after: int | None = None) -> dict:
        """Train on ``images`` (N, H, W) in [0, 1] until ``params.train.steps`` (resuming).

        ``stop_after`` ends this run after that many steps have been done in total (with a
        checkpoint), as if the job had been killed there; tests use it to check resuming.
        """
        tp = self.params.train
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or len(images) == 0:
            raise LmidError(f"{self.method}: expected training slices of shape (N, H, W), got {images.shape}")
        check_image_size(self.params.unet, *images.shape[1:])
        data = torch.as_tensor(np.clip(images, 0.0, 1.0))[:, None].to(self.device)

        torch.manual_seed(self.seed)  # weights' initialisation and dropout
        gen = torch.Generator().manual_seed(self.seed)
        self.net = build_unet(self.params.unet, in_channels=self.in_channels).to(self.device)
        if self.device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)
        n_params = count_parameters(self.net)
        opt = torch.optim.Adam(self.net.parameters(), lr=tp.lr)
        self.ema = Ema(self.net, tp.ema_decay)
        step, rows, clock_state = 0, [], {}

        if self.checkpoint_path.exists():
            ck = load_checkpoint(
                self.checkpoint_path,
                map_location=self.device,
                required=("format", "step", "model", "ema", "optimizer", "generator", "torch_rng"),
            )
            if ck["format"] != CHECKPOINT_FORMAT or ck.get("method") != self.method:
                raise InputFileError(self.checkpoint_path, f"not a {self.method} training checkpoint")
            load_module_state(self.net, ck["model"], self.checkpoint_path)
            opt.load_state_dict(ck["optimizer"])
            self.ema.shadow = {k: v.to(self.device) for k, v in ck["ema"].items()}
            gen.set_state(ck["generator"].cpu())
            torch.set_rng_state(ck["torch_rng"].cpu())
            if self.device.type == "cuda" and "cuda_rng" in ck:
                torch.cuda.set_rng_state(ck["cuda_rng"].cpu(), self.device)
            step = int(ck["step"])
            rows = list(zip(ck.get("log_steps", []), ck.get("log_losses", [])))
            window = [float(v) for v in ck.get("log_window", [])]
            clock_state = ck
            log.info("%s: resuming from %s at step %d", self.method, self.checkpoint_path, step)
        else:
            window = []

        total = int(tp.steps)
        end = total if stop_after is None else min(total, int(stop_after))
        self.clock = clock = TrainClock.resumed(clock_state)
        self.prepare_data(data)

        def logged_rows() -> list:
            # The log as written: the whole windows, then the steps since the last one as a row
            # of their own at the current step (a shorter window, which a longer run replaces).
            return list(rows) + ([(int(step), float(np.mean(window)))] if window else [])

        bar = tqdm(
            total=total, initial=step, desc=f"train {self.method}", disable=progress_disabled(), dynamic_ncols=True
        )
        self.net.train()
        while step < end:
            # ---- data: a batch of target slices, augmented
            idx = torch.randint(0, len(data), (tp.batch_size,), generator=gen)
            x0, variant = self._augment(data[idx.to(self.device)], gen)
            # ---- steps 1-2: antithetic t, one ε shared by x_t and x_{t+1}
            t = self._timesteps(tp.batch_size, gen)
            eps = torch.randn(x0.shape, generator=gen).to(self.device)
            t_dev = t.to(self.device)
            x_t = self.schedule.add_noise(x0, eps, t_dev)
            x_next = self.schedule.add_noise(x0, eps, (t_dev + 1).clamp_max(self.schedule.T - 1))
            inp = self.network_input(x0, x_t, x_next, idx, variant)
            if self.device.type == "cuda":
                inp = inp.contiguous(memory_format=torch.channels_last)
            # ---- step 3: ε-MSE (per image, then weighted)
            with autocast(self.device, self.amp, cpu=True):
                pred = self.net(inp, t_dev)
            per_image = (pred.float() - eps).square().mean(dim=(1, 2, 3))
            mse = per_image.mean()
            if tp.loss_weighting == "min_snr":
                loss = (per_image * min_snr_weights(self.schedule, t, tp.min_snr_gamma).to(self.device)).mean()
            else:
                loss = mse
            # ---- step 4: clipped Adam step, EMA
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, tp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), tp.grad_clip)
            opt.step()
            self.ema.update(self.net, ema_decay(step + 1, tp.ema_decay, tp.ema_warmup))
            step += 1
            # The log holds the plain ε-MSE whatever the weighting, so recipes compare.
            value = float(mse.detach())
            self.step_losses.append(value)
            window.append(value)
            bar.update(1)
            # Rows are whole windows of log_every steps; the checkpoint keeps the window in
            # progress, so where a run stops or is killed changes neither the rows nor their means.
            if step % tp.log_every == 0:
                rows.append((step, float(np.mean(window))))
                bar.set_postfix(loss=f"{rows[-1][1]:.4f}")
                window = []
            if tp.snapshot_every and step % tp.snapshot_every == 0:
                self._save_snapshot(step)
            if step % tp.checkpoint_every == 0 or step == end:
                self._save_checkpoint(step, opt, gen, rows, window)
                self._write_log(logged_rows())
        bar.close()
        self.steps_done = int(step)
        wall = clock.wall()
        if not self.checkpoint_path.exists():  # nothing to do (already trained) but keep files
            self._save_checkpoint(step, opt, gen, rows, window)
        logged = logged_rows()
        self._write_log(logged)
        return {
            "steps": int(step),
            "batch_size": int(tp.batch_size),
            "parameters": n_params,
            "train_loop_wall_s": round(wall, 3),
            "train_loop_cpu_s": round(clock.cpu(), 3),
            "final_loss": logged[-1][1] if logged else None,
            "image_size": list(images.shape[1:]),
            "training_slices": int(len(images)),
            "in_channels": self.in_channels,
            "finished": bool(step >= total),
        }

    def inference_model(self) -> DiffusionModel:
        """A network carrying the EMA weights, in eval mode, ready to sample."""
        if self.net is None or self.ema is None:
            raise LmidError(f"{self.method}: train before asking for the inference model")
        net = build_unet(self.params.unet, in_channels=self.in_channels).to(self.device)
        net.load_state_dict(self.ema.shadow)
        net.eval()
        if self.device.type == "cuda":
            net.to(memory_format=torch.channels_last)
        meta = {**self.meta(), "step": self.steps_done}
        return DiffusionModel(
            net=net,
            schedule=self.schedule,
            unet=self.params.unet,
            in_channels=self.in_channels,
            method=self.method,
            meta=meta,
            mixed_precision=self.params.train.mixed_precision,
        )


class LmiDiffusionTrainer(DiffusionTrainer):
    """LMIDiffusion: input ``[x_t, LMI(x_0, x_{t+1}), LMI(x_0, x_0)]`` (3 channels)."""

    in_channels: ClassVar[int] = 3

    def __init__(
        self,
        params: DiffusionParams,
        lmi: LmiParams,
        seed: int,
        out_dir: Path,
        device: torch.device,
        method: str = "lmidiffusion",
    ):
        super().__init__(params, seed, out_dir, device, method=method)
        self.lmi = lmi

    def prepare_data(self, data: torch.Tensor) -> None:
        # LMI(x_0, x_0) depends only on the slice and its augmentation variant: filled lazily,
        # one (N, V, 1, H, W) table; variants drawn with a continuous σ (-1) are never cached.
        self._data = data
        levels = self.blur_sigmas()
        n_var = 2 * ((len(levels) if levels is not None else 0) + 1)
        self._self_cache = None
        if self.params.train.cache_self_lmi:
            self._self_cache = torch.zeros((len(data), n_var, *data.shape[1:]), dtype=torch.float32, device=self.device)
            self._cached = torch.zeros((len(data), n_var), dtype=torch.bool, device=self.device)

    def self_lmi(self, x0: torch.Tensor, idx: torch.Tensor | None, variant: torch.Tensor | None) -> torch.Tensor:
        """LMI(x_0, x_0) of an augmented batch, from the per-slice cache where possible."""
        cache = getattr(self, "_self_cache", None)
        if cache is None or idx is None or variant is None:
            return lmi_map(x0, x0, self.lmi)
        idx = idx.to(self.device)
        out = torch.empty_like(x0, dtype=torch.float32)
        known = variant >= 0
        hit = torch.zeros_like(known)
        hit[known] = self._cached[idx[known], variant[known]]
        miss = ~hit
        if bool(miss.any()):
            out[miss] = lmi_map(x0[miss], x0[miss], self.lmi)
            store = miss & known
            cache[idx[store], variant[store]] = out[store]
            self._cached[idx[store], variant[store]] = True
        if bool(hit.any()):
            out[hit] = cache[idx[hit], variant[hit]]
        return out

    def network_input(self, x0, x_t, x_next, idx=None, variant=None):
        return torch.cat([x_t, lmi_map(x0, x_next, self.lmi), self.self_lmi(x0, idx, variant)], dim=1)

    def meta(self) -> dict:
        return {"lmi": self.lmi.model_dump(mode="json")}
