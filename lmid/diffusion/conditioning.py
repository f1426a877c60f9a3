"""What the network sees: x_t alone (SDEdit) or x_t with two LMI maps (LMIDiffusion).

LMIDiffusion's 3-channel input, with s the image that steers the sampling (docs/method.md §4):

* training (target slices only, s = x_0 the clean T1 slice):
  ``[x_t, LMI(x_0, x_{t+1}), LMI(x_0, x_0)]`` where x_t and x_{t+1} share one ε;
* sampling (s the source slice): ``[x_t, LMI(s, x_t), LMI(s, s)]`` with LMI(s, x_t) recomputed at
  every step and LMI(s, s) once.

The LMI layer (:mod:`lmid.lmi`) is configured by ``params.lmi``; its maps carry no gradient
(they are inputs of the network, computed under ``no_grad``).
"""

from __future__ import annotations

import torch

from lmid.config import LmiParams
from lmid.lmi import local_mutual_information


@torch.no_grad()
def lmi_map(guide: torch.Tensor, image: torch.Tensor, lmi: LmiParams) -> torch.Tensor:
    """LMI(guide, image) for (B, 1, H, W) tensors, in float32 whatever the autocast state."""
    with torch.autocast(device_type=guide.device.type, enabled=False):
        return local_mutual_information(
            guide.float(), image.float(), mode=lmi.mode, window=lmi.window, bins=lmi.bins, sigma=lmi.sigma
        )


class LmiGuide:
    """Builds ``[x_t, LMI(s, x_t), LMI(s, s)]`` for a batch of guide images s (B, 1, H, W)."""

    def __init__(self, source: torch.Tensor, lmi: LmiParams):
        self.source = source
        self.lmi = lmi
        # LMI(s, s): computed once per translation.
        self.self_map = lmi_map(source, source, lmi)

    def __call__(self, x_t: torch.Tensor) -> torch.Tensor:
        return torch.cat([x_t, lmi_map(self.source, x_t, self.lmi).to(x_t.dtype), self.self_map.to(x_t.dtype)], dim=1)
