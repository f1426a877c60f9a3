"""Cross-modal distances of the StyleGAN2-ADA projector between a source slice and a generated one.

``stylegan2.invert_loss`` picks one (:data:`INVERSION_LOSS_TEXT`): global normalised mutual
information from a differentiable B-spline Parzen histogram (:func:`parzen_nmi`) or the project's
local MI, plus the MIND descriptor distance (:func:`mind_distance`), and optionally the
1-Wasserstein distance of the generated intensities to the target training slices' histogram
(:func:`histogram_w1`). See :mod:`lmid.methods.stylegan2` for why these and not LPIPS.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lmid.config import Params
from lmid.errors import LmidError, ParamsError

NMI_BINS = 32
#: The intensity-distribution term: histogram bins and range, and the foreground threshold of
#: both the target training slices and the source slice (images on [0, 1], background ~0).
HIST_BINS = 64
HIST_RANGE = (-0.25, 1.25)
FOREGROUND = 0.05


# ------------------------------------------------------------------------ inversion distances
def _bspline_weights(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cubic B-spline Parzen window (Mattes et al. 2003) of (N, P) intensities in ~[0, 1].

    Returns the indices (N, P, 4) of the four histogram bins each value touches, in a histogram
    of ``bins + 3`` bins (one spare bin below 0 and two above 1), and their weights, which sum
    to 1 and are differentiable in x.
    """
    u = x.clamp(0.0, 1.0) * (bins - 1) + 1.0  # bin coordinate, offset by the spare bin
    base = torch.floor(u).detach() - 1.0
    idx = base[..., None] + torch.arange(4, device=x.device, dtype=x.dtype)  # (N, P, 4)
    r = (u[..., None] - idx).abs()
    w = torch.where(r < 1, (4 - 6 * r**2 + 3 * r**3) / 6, torch.where(r < 2, (2 - r) ** 3 / 6, torch.zeros_like(r)))
    return idx.long().clamp(0, bins + 2), w


def parzen_nmi(a: torch.Tensor, b: torch.Tensor, bins: int = NMI_BINS) -> torch.Tensor:
    """Normalised MI ``2 I / (H_a + H_b)`` per image of (N, 1, H, W) tensors in ~[0, 1] → (N,).

    The joint histogram uses a cubic B-spline Parzen window (each pixel spreads unit mass over
    4×4 bins), so it is differentiable and costs O(16 pixels) instead of O(pixels · bins²).
    Intensities are clamped to [0, 1] first (a generated pixel outside gets no gradient from it).
    """
    n = a.shape[0]
    nb = bins + 3
    ia, wa = _bspline_weights(a.flatten(1), bins)
    ib, wb = _bspline_weights(b.flatten(1), bins)
    index = (ia[..., :, None] * nb + ib[..., None, :]).flatten(1)  # (N, P·16)
    value = (wa[..., :, None] * wb[..., None, :]).flatten(1)
    joint = torch.zeros(n, nb * nb, device=a.device, dtype=value.dtype).scatter_add(1, index, value)
    joint = (joint / a[0].numel()).view(n, nb, nb)
    pa, pb = joint.sum(2), joint.sum(1)

    def entropy(p, dims):
        return -(p * torch.log(p + 1e-10)).sum(dims)

    ha, hb, hab = entropy(pa, 1), entropy(pb, 1), entropy(joint, (1, 2))
    return 2.0 * (ha + hb - hab) / (ha + hb + 1e-10)


def mind(x: torch.Tensor) -> torch.Tensor:
    """MIND descriptor (N, 4, H, W) of (N, 1, H, W) images: 3×3 patches, 4-neighbourhood."""
    h, w = x.shape[2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dists = []
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        shifted = padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        dists.append(F.avg_pool2d((x - shifted) ** 2, 3, stride=1, padding=1, count_include_pad=False))
    d = torch.cat(dists, 1)
    v = d.mean(1, keepdim=True)
    # Keep the variance estimate away from 0 in flat regions (as reference implementations do).
    vm = v.mean(dim=(2, 3), keepdim=True)
    v = torch.maximum(torch.minimum(v, vm * 1e3), vm * 1e-3 + 1e-12)
    desc = torch.exp(-d / v)
    return desc / desc.amax(1, keepdim=True)


def mind_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (mind(a) - mind(b)).abs().mean(dim=(1, 2, 3))


def inversion_distance(
    source: torch.Tensor,
    image: torch.Tensor,
    kind: str,
    params: Params,
    lmi_ss: torch.Tensor | None = None,
    target_histogram: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-slice distance (N,) between source and generated slices, both (N, 1, H, W) in ~[0, 1]."""
    if kind in ("nmi_mind", "nmi_mind_hist"):
        mi_term = 1.0 - parzen_nmi(source, image)
    elif kind == "lmi_mind":
        from lmid.lmi import local_mutual_information

        lp = params.lmi
        lmi = local_mutual_information(source, image, mode="exact", window=lp.window, bins=lp.bins, sigma=lp.sigma)
        mi_term = 1.0 - lmi.mean(dim=(1, 2, 3)) / lmi_ss
    else:
        raise ParamsError(f"stylegan2.invert_loss: unknown {kind!r}")
    dist = mi_term + mind_distance(source, image)
    if kind == "nmi_mind_hist":
        if target_histogram is None:
            raise LmidError(
                "stylegan2: invert_loss nmi_mind_hist needs the target histogram that training stores "
                "in model.pt (this model was trained without it; train stylegan2 again)"
            )
        dist = dist + params.stylegan2.invert_hist_weight * histogram_w1(image, source > FOREGROUND, target_histogram)
    return dist


INVERSION_LOSS_TEXT = {
    "nmi_mind": "(1 - NMI(source, G(w))) + MIND L1: global normalised mutual information from a differentiable "
    "32-bin B-spline Parzen histogram plus the modality-independent neighbourhood descriptor distance "
    "(LPIPS-VGG weights unavailable)",
    "nmi_mind_hist": "(1 - NMI(source, G(w))) + MIND L1 + w_h * W1(intensities of G(w) inside the source's "
    "foreground, the target training slices' foreground intensities) (a named variant: NMI and MIND "
    "ignore absolute intensity, the histogram term does not)",
    "lmi_mind": "(1 - mean LMI_exact(source, G(w)) / mean LMI_exact(source, source)) + MIND L1 "
    "(LPIPS-VGG weights unavailable)",
}


# -------------------------------------------------------------------- intensity distribution
def intensity_histogram(x: torch.Tensor, weight: torch.Tensor, bins: int = HIST_BINS) -> torch.Tensor:
    """Differentiable B-spline Parzen histogram (N, bins + 3) of (N, ...) intensities on
    [HIST_RANGE], each pixel counted with its ``weight`` (0/1 masks), normalised to sum to 1.

    The range reaches past [0, 1] so a pixel pushed beyond white still has a gradient."""
    lo, hi = HIST_RANGE
    n = x.shape[0]
    idx, w = _bspline_weights(((x.flatten(1) - lo) / (hi - lo)).clamp(0.0, 1.0), bins)
    w = w * weight.flatten(1).to(w.dtype)[..., None]
    hist = torch.zeros(n, bins + 3, device=x.device, dtype=w.dtype).scatter_add(1, idx.flatten(1), w.flatten(1))
    return hist / hist.sum(1, keepdim=True).clamp_min(1e-12)


def reference_histogram(target: np.ndarray) -> torch.Tensor:
    """The histogram (bins + 3,) of every foreground pixel of the target training slices."""
    x = torch.as_tensor(np.asarray(target, np.float32)).reshape(1, -1)
    return intensity_histogram(x, x > FOREGROUND)[0]


def histogram_w1(image: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-slice 1-Wasserstein distance (N,) between the intensities of ``image`` inside ``mask``
    and the reference histogram: the L1 distance of the two CDFs times the bin width."""
    lo, hi = HIST_RANGE
    hist = intensity_histogram(image, mask)
    cdf, ref = hist.cumsum(1), reference.to(hist.device, hist.dtype).cumsum(0)
    return (cdf - ref).abs().sum(1) * (hi - lo) / (HIST_BINS - 1)
