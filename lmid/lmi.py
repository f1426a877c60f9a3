"""Local mutual information (LMI) maps between two single-channel images.

For every pixel ``(i, j)`` the layer compares the source patch around the pixel with a set of
candidate target patches near it and keeps the largest normalised mutual information (NMI)::

    LMI(i, j) = max over candidates (a, b) of  NMI(P_s(i, j), P_t(i, j; a, b))

Estimator (one patch pair of ``n = window**2`` pixels, see docs/method.md §3):

* intensities ``u = 255 * source``, ``v = 255 * target`` (``trunc``-ated to integers in
  ``"authors"`` mode); pixels outside the image have value 0 (zero padding);
* ``bins`` Parzen centres ``c_k = linspace(0, 255, bins)``;
* kernel vector of one intensity ``x``: ``K(x)_k = exp(-0.5 * ((x - c_k) / s)**2)`` with
  ``s = 2 * sigma**2`` (see "sigma" below);
* marginals ``p_s = mean_n K(u_n) / (sum + eps)`` and likewise ``p_t`` (eps = 1e-10);
* joint ``J = sum_n K(u_n) K(v_n)^T / (sum + eps)`` -- i.e. ``K_s^T K_t`` for the
  ``n x bins`` kernel matrices of the pair;
* entropies in bits ``H(p) = -sum p log2(p + eps)``; ``MI = H_s + H_t - H_st``;
* output ``NMI = 2 (MI + eps) / (H_s + H_t + eps)``.  This is ~0 for a flat pair and exactly 2
  when every kernel value of the candidate underflows to 0 (intensities far outside [0, 255]).

About ``sigma``: the released layer stores ``2 * sigma**2`` in the attribute it then uses as the
*standard deviation* of the Gaussian, ``exp(-0.5 * (r / (2 sigma^2))**2)``.  With the configured
``sigma = 2`` the kernel therefore has an effective std of 8 grey levels, i.e.
``exp(-r**2 / 128)``; it is *not* ``exp(-r**2 / 8)``.  We keep ``sigma`` as the configured value
and apply the same mapping in both modes.  (Checked: with std 8 an identical random 3x3 patch
scores ~0.52 and independent noise ~0.39 before the max over candidates, ~0.515 / ~0.40 after
it, close to the ~0.53 / ~0.41 quoted in docs/method.md §3; with std 2 the NMI would exceed 1.)
Validated against the released code run as is: max abs difference <= 9e-7 (float32) on
128x128 random, identical, smooth and out-of-range image pairs.

Candidates:

* ``mode="authors"`` (window 3): reproduces the released layer, whose 8 off-centre candidates
  are "folded" patches.  Element ``(c, d)`` of candidate ``(a, b)`` is
  ``v[R(i, a + c - 1), C(j, b + d - 1)]`` with ``R(i, k) = i, i-1, i, i+1, i`` for
  ``k = -1, 0, 1, 2, 3``; the folded ``k = -1`` at ``i = 0`` and ``k = 3`` at ``i = H-1`` (and
  any row outside the image) read 0.  Columns likewise.
* ``mode="exact"`` (odd ``window = 2r+1``): candidate ``(a, b)`` is the true window centred at
  ``(i + a - r, j + b - r)``; no truncation, so the map is differentiable in both inputs.

In both modes candidate ``(a, b)`` is the ``window x window`` sub-grid starting at ``(a, b)`` of an
``L x L`` "extended" neighbourhood (``L = 2 window - 1``), described by two small index tables
(rows, columns).  That shared description lets one code path serve both modes.

Acceleration: the Parzen kernel is evaluated once per image pixel (not once per patch element)
and patches are gathered as whole kernel vectors through precomputed flat offsets; the source
marginal and entropy are computed once per pixel and shared by all candidates; all
``window**2`` joints of a pixel come out of one batched matmul, whose entropy is then taken in
two in-place passes; pixels are processed in raster-order chunks of at most
``max_chunk_pixels`` so peak memory stays bounded (and, when gradients are needed, each chunk is
checkpointed so autograd does not keep every joint alive).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["local_mutual_information", "LocalMutualInformation", "EPS"]

#: Guard used by the released layer in every normalisation, log and the NMI ratio.
EPS = 1e-10

_MODES = ("authors", "exact")

# Budget (bytes) for the per-chunk joint-histogram buffer when max_chunk_pixels is None; the
# chunk's peak is ~3x this (joint, its plogp, gathered kernels).  On CPU small chunks that stay
# in cache are fastest (measured: 256-512 pixels ~2x faster than 4k-16k); on CUDA large chunks
# amortise kernel launches.  Either way 256x256 x batch 16 needs well under 1 GB of work space.
_JOINT_BUDGET_BYTES = {"cpu": 12 * 1024 * 1024, "cuda": 256 * 1024 * 1024}


def _index_tables(n: int, mode: str, window: int, device: torch.device):
    """Index tables into an axis of length ``n`` zero-padded by ``pad`` on both sides.

    Returns ``(src, ext, pad)``: ``src[i]`` (length ``window``) are the padded coordinates of the
    source patch around ``i``; ``ext[i]`` (length ``L = 2 window - 1``) those of the extended
    target neighbourhood from which candidate ``a`` takes elements ``ext[i, a:a + window]``.
    """
    r = window // 2
    i = torch.arange(n, device=device)
    if mode == "authors":
        pad = 1
        # ext[:, k + 1] = R(i, k) for k = -1..3 (folded rows k = -1 and k = 3 read row i).
        offs = torch.tensor([0, -1, 0, 1, 0], device=device)
        ext = i[:, None] + offs + pad
        # The folded rows only exist when a neighbouring row does; at the border they read 0,
        # which is padded coordinate 0 (top) or n + 1 (bottom).
        ext[0, 0] = 0
        ext[n - 1, 4] = n + 1
    else:
        pad = 2 * r
        # True neighbourhood i - 2r .. i + 2r, shifted by the padding.
        ext = i[:, None] + torch.arange(2 * window - 1, device=device)
    src = i[:, None] + torch.arange(window, device=device) - r + pad
    return src, ext, pad


def _parzen(x: torch.Tensor, centres: torch.Tensor, std: float) -> torch.Tensor:
    """Kernel vectors ``exp(-0.5 ((x - c_k) / std)**2)``, shape ``x.shape + (bins,)``.

    Values below ``2 sqrt(finfo.tiny)`` (2.2e-19 in float32, 3e-154 in float64) are set to 0 so
    that no pairwise product in the joint histogram is subnormal: x86 CPUs process subnormals
    ~100x slower, which made the float32 layer 4-5x slower than float64.  Dropped products are
    below 1e-38 (float32), far under the 1e-10 guards, so results are unchanged: against the
    released layer the max difference stays 5e-7..8e-7 (float32 rounding) on 128x128 images,
    also with intensities spread over [-4, 5] (a threshold of tiny**0.4 gave 3e-4 there).
    """
    k = torch.exp(-0.5 * ((x.unsqueeze(-1) - centres) / std) ** 2)
    floor = 2.0 * torch.finfo(k.dtype).tiny ** 0.5
    return torch.where(k < floor, torch.zeros((), dtype=k.dtype, device=k.device), k)


def _parzen_flat(x: torch.Tensor, centres: torch.Tensor, std: float, table: bool) -> torch.Tensor:
    """:func:`_parzen` of every element of ``x`` as a (numel, bins) matrix; with ``table``, through
    the kernel vectors of ``x``'s distinct values (the same numbers, one exp per distinct value)."""
    flat = x.reshape(-1)
    if table and not flat.requires_grad:
        values, inverse = torch.unique(flat, return_inverse=True)
        return _parzen(values, centres, std).index_select(0, inverse)
    return _parzen(flat, centres, std)


def _entropy_bits(p: torch.Tensor, dim) -> torch.Tensor:
    """Shannon entropy in bits with the layer's ``log2(p + eps)`` guard."""
    return -(p * torch.log2(p + EPS)).sum(dim=dim)


def _normalise(p: torch.Tensor, dim) -> torch.Tensor:
    return p / (p.sum(dim=dim, keepdim=True) + EPS)


#: Source-window widths (in bins) of the no-grad path; empty = off. A clean image's 3x3 patch
#: usually spans a few grey levels, so its kernel vectors are negligible outside ~12-20 of the
#: 27 bins. Each pixel takes the narrowest width that holds every significant source bin of its
#: patch, and its joints and their entropy are taken over those bins only. Pixels are grouped by
#: width before chunking, so no chunk mixes widths (reports/benchmarks/training-cpu.md).
SOURCE_WINDOWS = (12, 14, 17, 20, 23)
#: A source bin is significant when some patch pixel's kernel value there reaches this. In-range
#: intensities have a peak kernel value >= 0.83, so the joint mass left out is at most
#: bins * tau / 0.83 of the total (3e-8 for 27 bins), which moves an entropy by ~1e-6 bits.
WINDOW_TAU = 1e-9


def _source_windows(
    u_min: torch.Tensor, u_max: torch.Tensor, bins: int, std: float, widths=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, ``(start, width)`` of the source-bin window holding every significant bin.

    ``u_min``/``u_max``: the smallest and largest intensity (0..255 scale) of each pixel's source
    patch. Kernel value ``K(u)_k < WINDOW_TAU`` when ``|u - c_k| > D = std sqrt(2 ln(1/tau))``, so
    the significant bins are those with centres in ``[u_min - D, u_max + D]``. A patch with any
    intensity outside [0, 255] (its peak kernel value may be tiny, and then so is the joint's
    total) takes the full width, as does one that no width in ``widths`` holds.
    """
    widths = SOURCE_WINDOWS if widths is None else widths
    full = torch.full_like(u_min, bins, dtype=torch.long)
    if not widths or bins < 2:
        return torch.zeros_like(full), full
    step = 255.0 / (bins - 1)
    reach = std * (2.0 * torch.log(torch.tensor(1.0 / WINDOW_TAU, dtype=torch.float64))).sqrt().item()
    lo = torch.ceil((u_min - reach) / step).clamp(0, bins - 1).long()
    hi = torch.floor((u_max + reach) / step).clamp(0, bins - 1).long()
    need = hi - lo + 1
    width = full.clone()
    for w in sorted(widths, reverse=True):  # narrowest width that holds the window
        if w < bins:
            width = torch.where(need <= w, w, width)
    width = torch.where((u_min < 0) | (u_max > 255), full, width)
    start = torch.minimum(lo, bins - width).clamp_min(0)
    return start, width


def _joint_entropy_nograd(rhs, ks, total, out, log_buf):
    """Joint entropies (n, cand) from K_t (n, cand*bins, npx) and K_s (n, npx, bs); no autograd.

    Reused buffers (fresh multi-MB allocations cost page faults on CPU) and few passes over the
    joint. With p = J / T, -sum p log2 p = (T' log2 T - sum J log2 J) / T, T' = sum J = T - eps.
    Leaving out the released layer's "+ eps" inside the log changes each term by at most ~eps,
    i.e. the entropy by < 1e-7 bits. Zeros are lifted to the smallest normal float
    (0 * log2(tiny) = 0): log2 of 0 or of subnormals is ~10x slower on x86. Every non-zero joint
    entry is >= 4 tiny already (see _parzen), so nothing else moves.
    """
    n, cand = total.shape
    joint = torch.bmm(rhs, ks, out=out).view(n * cand, -1)
    log_j = log_buf.view(n * cand, -1)
    torch.clamp_min(joint, torch.finfo(joint.dtype).tiny, out=log_j).log2_()
    jlogj = log_j.mul_(joint).sum(-1).view(n, cand)
    return ((total - EPS) * torch.log2(total) - jlogj) / total


def _gather_chunk(ks_flat, kt_flat, src_idx, cand_idx, b, pix, stride):
    """A chunk's kernel vectors and what every joint of it shares (see :func:`_chunk_nmi`).

    Returns ``(K_s (n, w*w, bins), K_t as the matmul's left operand (n, cand*bins, w*w), H_s (n, 1),
    H_t (n, cand), the joints' totals (n, cand))``.
    """
    n = b.shape[0]
    npx, cand = cand_idx.shape[1:]
    bins = ks_flat.shape[-1]
    base = (b * stride)[:, None]
    # Row gathers with precomputed flat offsets: index_select copies whole kernel vectors,
    # several times faster on CPU than multi-dimensional advanced indexing.
    ks = ks_flat.index_select(0, (base + src_idx[pix]).view(-1)).view(n, npx, bins)
    # K_t[n, (c, d), (a, b), q]: gathered straight into the layout the matmul wants.
    kt = kt_flat.index_select(0, (base[:, :, None] + cand_idx[pix]).view(-1)).view(n, npx, cand, bins)
    # Source marginal and entropy: once per pixel, shared by all candidates.
    h_s = _entropy_bits(_normalise(ks.mean(dim=1), -1), -1)[:, None]
    h_t = _entropy_bits(_normalise(kt.mean(dim=1), -1), -1)
    # Normaliser of each joint, sum_{p,q} J = sum_{c,d} (sum_p K_s)(sum_q K_t), without
    # reading the joint itself.
    total = torch.einsum("nk,nkc->nc", ks.sum(-1), kt.sum(-1)) + EPS
    rhs = kt.view(n, npx, cand * bins).transpose(1, 2)  # strided view, bmm reads it as is
    return ks, rhs, h_s, h_t, total


def _chunk_nmi_nograd(ks_flat, kt_flat, src_idx, cand_idx, b, pix, stride, start, width, workspace):
    """:func:`_chunk_nmi` without autograd, for pixels that share one source-window ``width``.

    ``start`` (n,): first source bin of each pixel's window. The joints are (cand * bins) x width
    instead of (cand * bins) x bins; marginals, their entropies and the joints' totals still use
    every bin.
    """
    ks, rhs, h_s, h_t, total = _gather_chunk(ks_flat, kt_flat, src_idx, cand_idx, b, pix, stride)
    n, npx, bins = ks.shape
    cand = cand_idx.shape[-1]
    if width < bins:
        cols = start[:, None, None] + torch.arange(width, device=ks.device)
        ks = ks.gather(2, cols.expand(-1, npx, -1))
    size = n * cand * bins * width
    buf, log_buf = workspace[0].view(-1)[:size], workspace[1].view(-1)[:size]
    h_st = _joint_entropy_nograd(rhs, ks, total, buf.view(n, cand * bins, width), log_buf.view(n, cand * bins, width))
    nmi = 2.0 * (h_s + h_t - h_st + EPS) / (h_s + h_t + EPS)
    return nmi.amax(dim=1)


def _chunk_nmi(ks_flat, kt_flat, src_idx, cand_idx, b, pix, stride):
    """Max-over-candidates NMI for a chunk of pixels (the autograd-friendly path).

    ``ks_flat`` / ``kt_flat``: (B * Hp * Wp, bins) kernel vectors of the padded source / target.
    ``src_idx[p]`` (w * w,): flat padded offsets of the source patch of image pixel ``p``;
    ``cand_idx[p]`` (w * w, cand): flat offsets of element (c, d) of every candidate (a, b).
    ``b``, ``pix``: batch index and image-pixel index (1-D, length n) of the chunk's pixels;
    ``stride``: rows of ``ks_flat`` per image (Hp * Wp).
    """
    ks, rhs, h_s, h_t, total = _gather_chunk(ks_flat, kt_flat, src_idx, cand_idx, b, pix, stride)
    n, _, bins = ks.shape
    cand = cand_idx.shape[-1]
    # All joints of the chunk in one batched matmul over the patch pixels (c, d):
    # J[n, (a, b, q), p] = sum_{c,d} K_t[n, (c, d), (a, b, q)] K_s[n, (c, d), p].
    joint = torch.bmm(rhs, ks).view(n, cand, bins * bins) / total[..., None]
    h_st = _entropy_bits(joint, -1)  # (n, cand)
    nmi = 2.0 * (h_s + h_t - h_st + EPS) / (h_s + h_t + EPS)
    return nmi.amax(dim=1)


def local_mutual_information(
    source: torch.Tensor,
    target: torch.Tensor,
    mode: str = "authors",
    window: int = 3,
    bins: int = 27,
    sigma: float = 2.0,
    max_chunk_pixels: int | None = None,
) -> torch.Tensor:
    """Per-pixel local NMI map between ``source`` and ``target``.

    Args:
        source, target: (B, 1, H, W) floating tensors, intensities nominally in [0, 1]
            (values outside are allowed and behave like the released layer).
        mode: ``"authors"`` -- bit-for-bit definition of the released layer (3x3 window,
            integer truncation, folded off-centre candidates; not differentiable in practice);
            ``"exact"`` -- no truncation, true shifted candidate windows, differentiable.
        window: patch side (odd).  Must be 3 in ``"authors"`` mode.  There are ``window**2``
            candidates per pixel.
        bins: number of Parzen centres, evenly spaced on [0, 255].
        sigma: the *configured* sigma; the Gaussian kernel's std is ``2 * sigma**2`` grey levels
            (8 for the default 2), exactly as in the released code.
        max_chunk_pixels: most pixels (over batch and image, raster order) processed at once;
            peak work memory is ~3 * 4 bytes * window**2 * bins**2 per pixel of a chunk (float32).
            ``None``: ~12 MiB of joints per chunk on CPU (~480 pixels, cache friendly), ~256 MiB
            on CUDA (~10k pixels).

    Returns:
        (B, 1, H, W) tensor of the same dtype and device as ``source``: the max over candidates
        of the NMI, in [0, 2] (0 for flat patches, ~0.53 for identical textured patches).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode == "authors" and window != 3:
        raise ValueError("mode='authors' reproduces the released layer, whose window is 3")
    if window < 1 or window % 2 != 1:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if max_chunk_pixels is not None and max_chunk_pixels < 1:
        raise ValueError(f"max_chunk_pixels must be >= 1, got {max_chunk_pixels}")
    if source.dim() != 4 or source.shape[1] != 1:
        raise ValueError(f"expected source of shape (B, 1, H, W), got {tuple(source.shape)}")
    if target.shape != source.shape:
        raise ValueError(f"shape mismatch: {tuple(source.shape)} vs {tuple(target.shape)}")
    if not (source.is_floating_point() and target.is_floating_point()):
        raise TypeError("source and target must be floating-point tensors")

    out_dtype = source.dtype
    # Half precision cannot hold the entropies accurately; compute in float32 and cast back.
    dtype = torch.promote_types(source.dtype, target.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    device = source.device
    bsz, _, height, width = source.shape

    u = source.to(dtype) * 255.0
    v = target.to(dtype) * 255.0
    if mode == "authors":
        # The released layer casts with .int(): truncation towards zero.
        u = torch.trunc(u)
        v = torch.trunc(v)

    src_r, ext_r, pad = _index_tables(height, mode, window, device)
    src_c, ext_c, _ = _index_tables(width, mode, window, device)
    wp = width + 2 * pad
    # Flat offsets into one padded image.  Source patch of pixel (i, j): element (c, d) at
    # (src_r[i, c], src_c[j, d]).  Candidate (a, b) of pixel (i, j): element (c, d) at
    # (ext_r[i, a + c], ext_c[j, b + d]).  Layouts: src_idx[p, (c, d)], cand_idx[p, (c, d), (a, b)].
    src_idx = (src_r[:, None, :, None] * wp + src_c[None, :, None, :]).reshape(height * width, -1)
    a_plus_c = torch.arange(window, device=device)[:, None] + torch.arange(window, device=device)
    cand_r = ext_r[:, a_plus_c]  # [i, c, a]
    cand_c = ext_c[:, a_plus_c]  # [j, d, b]
    cand_idx = (cand_r[:, None, :, None, :, None] * wp + cand_c[None, :, None, :, None, :]).reshape(
        height * width, window * window, window * window
    )
    # Zero padding = intensity 0 outside the image (its kernel vector is not zero).
    u = nn.functional.pad(u[:, 0], (pad, pad, pad, pad))
    v = nn.functional.pad(v[:, 0], (pad, pad, pad, pad))

    centres = torch.linspace(0.0, 255.0, bins, dtype=dtype, device=device)
    std = 2.0 * float(sigma) ** 2
    # Parzen kernel of every (padded) pixel, evaluated once: (B * Hp * Wp, bins). Truncated
    # intensities take few distinct values (0..255 for an image in range), so their kernel
    # vectors come from a table of those values rather than one exp per pixel and bin.
    ks_flat = _parzen_flat(u, centres, std, table=mode == "authors")
    kt_flat = _parzen_flat(v, centres, std, table=mode == "authors")
    stride = u.shape[1] * u.shape[2]

    n_pix = bsz * height * width
    per_pixel = window * window * bins * bins * torch.finfo(dtype).bits // 8
    budget = _JOINT_BUDGET_BYTES["cpu" if device.type == "cpu" else "cuda"]
    needs_grad = torch.is_grad_enabled() and (ks_flat.requires_grad or kt_flat.requires_grad)
    if not needs_grad:
        return _lmi_nograd(
            u,
            ks_flat,
            kt_flat,
            src_idx,
            cand_idx,
            (bsz, height, width),
            stride,
            bins,
            std,
            max_chunk_pixels or max(1, budget // per_pixel),
        ).to(out_dtype)
    chunk = min(max_chunk_pixels or max(1, budget // per_pixel), n_pix)
    out = []
    for start in range(0, n_pix, chunk):
        flat = torch.arange(start, min(start + chunk, n_pix), device=device)
        b = flat // (height * width)
        args = (ks_flat, kt_flat, src_idx, cand_idx, b, flat - b * (height * width), stride)
        if n_pix > chunk:
            # Recompute each chunk in backward instead of keeping all joints alive.
            out.append(checkpoint(_chunk_nmi, *args, use_reentrant=False))
        else:
            out.append(_chunk_nmi(*args))
    lmi = torch.cat(out).view(bsz, 1, height, width)
    return lmi.to(out_dtype)


def _lmi_nograd(u, ks_flat, kt_flat, src_idx, cand_idx, shape, stride, bins, std, max_chunk_pixels):
    """The layer without autograd: pixels grouped by source-window width, then chunked.

    A chunk of width-``w`` pixels holds ``max_chunk_pixels * bins / w`` of them (the joint
    buffer's size is what the budget bounds). Returns the (B, 1, H, W) map.
    """
    bsz, height, width_px = shape
    hw = height * width_px
    n_pix = bsz * hw
    device = u.device
    flat = torch.arange(n_pix, device=device)
    b_all = flat // hw
    pix_all = flat - b_all * hw
    patch = u.reshape(-1)[(b_all * stride)[:, None] + src_idx[pix_all]]  # (n_pix, w*w)
    start, width = _source_windows(patch.amin(-1), patch.amax(-1), bins, std)
    out = torch.empty(n_pix, dtype=ks_flat.dtype, device=device)
    cand = cand_idx.shape[-1]
    chunk_full = min(max_chunk_pixels, n_pix)
    shape_ws = (chunk_full, cand * bins, bins)
    workspace = (
        torch.empty(shape_ws, dtype=ks_flat.dtype, device=device),
        torch.empty(shape_ws, dtype=ks_flat.dtype, device=device),
    )
    for w in torch.unique(width).tolist():
        members = (width == w).nonzero().squeeze(1)
        chunk = max(1, chunk_full * bins // w)
        for lo in range(0, len(members), chunk):
            sel = members[lo : lo + chunk]
            out[sel] = _chunk_nmi_nograd(
                ks_flat, kt_flat, src_idx, cand_idx, b_all[sel], pix_all[sel], stride, start[sel], int(w), workspace
            )
    return out.view(bsz, 1, height, width_px)


class LocalMutualInformation(nn.Module):
    """Module wrapper of :func:`local_mutual_information` (no parameters)."""

    def __init__(
        self,
        mode: str = "authors",
        window: int = 3,
        bins: int = 27,
        sigma: float = 2.0,
        max_chunk_pixels: int | None = None,
    ):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if mode == "authors" and window != 3:
            raise ValueError("mode='authors' reproduces the released layer, whose window is 3")
        self.mode = mode
        self.window = window
        self.bins = bins
        self.sigma = sigma
        self.max_chunk_pixels = max_chunk_pixels

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return local_mutual_information(
            source,
            target,
            mode=self.mode,
            window=self.window,
            bins=self.bins,
            sigma=self.sigma,
            max_chunk_pixels=self.max_chunk_pixels,
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, window={self.window}, bins={self.bins}, sigma={self.sigma}"
