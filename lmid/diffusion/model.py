"""A trained diffusion model as stored in ``model.pt``, and batched translation with it.

``model.pt`` holds the EMA weights (the ones that sample), the architecture-defining params
(U-Net, schedule, input channels) and method-specific facts (``meta``: the LMI settings the
network was trained with, SDEdit's chosen t0 and its validation sweep). :meth:`DiffusionModel.load`
rebuilds the network from what the file says, not from the current ``params.yaml``, so a model
is always sampled with the architecture and conditioning it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from lmid.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from lmid.config import ScheduleParams, UNetParams
from lmid.diffusion.sampler import ChainNoise, chain_seed
from lmid.diffusion.schedule import NoiseSchedule
from lmid.diffusion.unet import build_unet
from lmid.errors import InputFileError
from lmid.networks import autocast

FORMAT = "lmid-diffusion-model"


@dataclass
class DiffusionModel:
    net: nn.Module
    schedule: NoiseSchedule
    unet: UNetParams
    in_channels: int
    method: str
    meta: dict = field(default_factory=dict)
    mixed_precision: bool = True

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def eps_fn(self, build_input: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """ε̂_θ(x_t, t) with the network input built from x_t by ``build_input`` (identity if None)."""
        device = self.device
        channels_last = device.type == "cuda"

        def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            inp = build_input(x_t) if build_input is not None else x_t
            if channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            with autocast(device, self.mixed_precision, cpu=True):
                return self.net(inp, t).float()

        return fn

    # ------------------------------------------------------------------------------- storage
    def save(self, path: Path) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.net.state_dict().items()}
        save_checkpoint(
            path,
            {
                "format": FORMAT,
                "method": self.method,
                "state_dict": state,
                "unet": self.unet.model_dump(mode="json"),
                "schedule": self.schedule.state(),
                "in_channels": int(self.in_channels),
                "meta": self.meta,
            },
        )

    @classmethod
    def load(cls, path: Path, device: torch.device, method: str, mixed_precision: bool = True) -> "DiffusionModel":
        state = load_checkpoint(path, required=("format", "state_dict", "unet", "schedule", "in_channels"))
        if state["format"] != FORMAT:
            raise InputFileError(path, f"not an lmid diffusion model (format {state['format']!r})")
        if state.get("method") != method:
            raise InputFileError(path, f"holds a {state.get('method')!r} model, not {method!r}")
        try:
            unet = UNetParams.model_validate(state["unet"])
            schedule = NoiseSchedule(ScheduleParams.model_validate(state["schedule"]))
        except ValueError as err:
            raise InputFileError(path, f"stored architecture is not valid: {err}") from None
        net = build_unet(unet, in_channels=int(state["in_channels"]))
        load_module_state(net, state["state_dict"], path, what=f"{method} U-Net")
        net.to(device).eval()
        if device.type == "cuda":
            net.to(memory_format=torch.channels_last)
        return cls(
            net=net,
            schedule=schedule,
            unet=unet,
            in_channels=int(state["in_channels"]),
            method=method,
            meta=dict(state.get("meta", {})),
            mixed_precision=mixed_precision,
        )


def translate_batched(
    source: np.ndarray,
    seeds: np.ndarray,
    samples: int,
    batch_size: int,
    device: torch.device,
    one_batch: Callable[[torch.Tensor, ChainNoise], torch.Tensor],
    progress=None,
):
    """Run ``one_batch`` over all chains (slice × sample), ``batch_size`` chains at a time.

    Chain (i, k) — sample k of slice i — draws its noise from a generator seeded with
    ``chain_seed(seeds[i], k)``, so its result does not depend on batching or sharding.
    Returns ``(chain 0 (N, H, W), mean over samples or None, per-pixel std over samples or None)``:
    chain 0 is what gets scored (a mean of chains is blurrier than any sample), the mean and std
    are the uncertainty product, reported apart; both are None for one sample.
    """
    source = np.asarray(source, dtype=np.float32)
    if source.ndim != 3:
        raise ValueError(f"source must have shape (N, H, W), got {source.shape}")
    seeds = np.asarray(seeds).reshape(-1)
    if len(seeds) != len(source):
        raise ValueError(f"got {len(seeds)} seeds for {len(source)} slices")
    n, h, w = source.shape
    chains = [(i, k) for i in range(n) for k in range(samples)]
    out = np.empty((len(chains), h, w), np.float32)
    for start in range(0, len(chains), batch_size):
        part = chains[start : start + batch_size]
        src = torch.as_tensor(source[[i for i, _ in part]][:, None]).to(device)
        noise = ChainNoise([chain_seed(int(seeds[i]), k) for i, k in part], device)
        result = one_batch(src, noise)
        out[start : start + len(part)] = result[:, 0].float().cpu().numpy()
        if progress is not None:
            progress(len(part))
    out = out.reshape(n, samples, h, w)
    first = np.clip(out[:, 0], 0.0, 1.0).astype(np.float32)
    if samples == 1:
        return first, None, None
    return first, np.clip(out.mean(axis=1), 0.0, 1.0).astype(np.float32), out.std(axis=1).astype(np.float32)
