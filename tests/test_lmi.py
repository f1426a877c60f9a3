"""Tests of lmid.lmi against an independent per-pixel NumPy reference (docs/method.md §3).

The reference below is written from the definition with plain loops; it shares no code with the
module.  Measured values behind the property tolerances (seeded random images):

* identical 64x64 random images, interior mean: 0.515 (authors and exact); docs/method.md says about 0.52;
  independent noise 0.396 (docs/method.md: about 0.40);
* contrast inversion, LMI(x, 1-x) vs LMI(x, x), authors mode: interior mean |diff| 1.3e-4
  (max 1.1e-3); over the whole image 1.9e-3 (max 0.14 at the border, where the zero padding is
  not inverted);
* flat 0.5 image: interior <= 6e-11; two different flat images: <= 2.7e-7 (the 1e-10 log guard);
* all values 5.0 / -4.0: exactly 2 everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmid.lmi import LocalMutualInformation, local_mutual_information

EPS = 1e-10


# --------------------------------------------------------------------------- reference


def _nmi_reference(src_vals, tgt_vals, centres, std):
    """NMI of one patch pair, straight from the definition (float64)."""
    ks = np.exp(-0.5 * ((np.asarray(src_vals)[:, None] - centres[None, :]) / std) ** 2)
    kt = np.exp(-0.5 * ((np.asarray(tgt_vals)[:, None] - centres[None, :]) / std) ** 2)
    p_s = ks.mean(axis=0)
    p_s = p_s / (p_s.sum() + EPS)
    p_t = kt.mean(axis=0)
    p_t = p_t / (p_t.sum() + EPS)
    joint = np.zeros((len(centres), len(centres)))
    for n in range(len(src_vals)):
        joint += np.outer(ks[n], kt[n])
    joint = joint / (joint.sum() + EPS)
    h_s = -np.sum(p_s * np.log2(p_s + EPS))
    h_t = -np.sum(p_t * np.log2(p_t + EPS))
    h_st = -np.sum(joint * np.log2(joint + EPS))
    return 2.0 * (h_s + h_t - h_st + EPS) / (h_s + h_t + EPS)


def _folded_row(i, k, n):
    """R(i, k) of docs/method.md §3 (folded rows); None means "reads 0"."""
    if k == -1:
        return i if i > 0 else None
    if k == 3:
        return i if i < n - 1 else None
    return i + k - 1  # k = 0, 1, 2 -> i-1, i, i+1 (may fall outside: reads 0)


def lmi_reference(source, target, mode="authors", window=3, bins=27, sigma=2.0):
    """Per-pixel loops over (b, i, j) and candidates (a, b'); returns (B, 1, H, W) float64."""
    s = np.asarray(source, dtype=np.float64)[:, 0] * 255.0
    t = np.asarray(target, dtype=np.float64)[:, 0] * 255.0
    if mode == "authors":
        s, t = np.trunc(s), np.trunc(t)
    nb, h, w = s.shape
    r = window // 2
    centres = np.linspace(0.0, 255.0, bins)
    std = 2.0 * sigma**2

    def value(img, row, col):
        if row is None or col is None or not (0 <= row < h and 0 <= col < w):
            return 0.0
        return img[row, col]

    out = np.zeros((nb, 1, h, w))
    for b in range(nb):
        for i in range(h):
            for j in range(w):
                src = [value(s[b], i + c - r, j + d - r) for c in range(window) for d in range(window)]
                best = -np.inf
                for a in range(window):
                    for bb in range(window):
                        if mode == "authors":
                            tgt = [
                                value(t[b], _folded_row(i, a + c - 1, h), _folded_row(j, bb + d - 1, w))
                                for c in range(3)
                                for d in range(3)
                            ]
                        else:
                            tgt = [
                                value(t[b], i + a - r + c - r, j + bb - r + d - r)
                                for c in range(window)
                                for d in range(window)
                            ]
                        best = max(best, _nmi_reference(src, tgt, centres, std))
                out[b, 0, i, j] = best
    return out


def _rand(shape, seed, dtype=torch.float64, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)


INTERIOR = (slice(None), slice(None), slice(1, -1), slice(1, -1))


@pytest.fixture(autouse=True)
def _single_thread():
    # These inputs are tiny: intra-op threads only add synchronisation, which on a shared
    # 2-core machine made some tests 10x slower.  Restored afterwards for other test files.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- reference match


@pytest.mark.parametrize("mode", ["authors", "exact"])
@pytest.mark.parametrize("shape", [(2, 1, 7, 9), (1, 1, 8, 8), (1, 1, 1, 5), (3, 1, 4, 2)])
def test_matches_numpy_reference(mode, shape):
    x, y = _rand(shape, 1), _rand(shape, 2)
    ours = local_mutual_information(x, y, mode=mode)
    assert ours.shape == shape and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), lmi_reference(x.numpy(), y.numpy(), mode), atol=1e-5, rtol=0)


def test_exact_mode_configurable_window_bins_sigma():
    x, y = _rand((1, 1, 6, 7), 3), _rand((1, 1, 6, 7), 4)
    ours = local_mutual_information(x, y, mode="exact", window=5, bins=16, sigma=1.5)
    ref = lmi_reference(x.numpy(), y.numpy(), "exact", window=5, bins=16, sigma=1.5)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5, rtol=0)


def test_authors_float32_matches_reference():
    # Grey levels k + 0.5 so that float32 and float64 truncate to the same integers.
    g = torch.Generator().manual_seed(5)
    x = ((torch.randint(0, 255, (2, 1, 7, 9), generator=g) + 0.5) / 255).float()
    y = ((torch.randint(0, 255, (2, 1, 7, 9), generator=g) + 0.5) / 255).float()
    ours = local_mutual_information(x, y)
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), lmi_reference(x.double().numpy(), y.double().numpy()), atol=1e-5, rtol=0)


def test_out_of_range_values_match_reference():
    x, y = _rand((1, 1, 6, 6), 6, lo=-0.4, hi=1.4), _rand((1, 1, 6, 6), 7, lo=-0.4, hi=1.4)
    ours = local_mutual_information(x, y)
    np.testing.assert_allclose(ours.numpy(), lmi_reference(x.numpy(), y.numpy()), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- properties


def test_contrast_inversion_nearly_invariant():
    x = _rand((2, 1, 32, 32), 8, dtype=torch.float32)
    same = local_mutual_information(x, x)
    inverted = local_mutual_information(x, 1.0 - x)
    diff = (same - inverted).abs()
    # Measured: interior mean 1.3e-4; whole image mean 1.9e-3 (zero padding is not inverted).
    assert diff[INTERIOR].mean() < 1e-3
    assert diff.mean() < 1e-2


def test_flat_regions_give_zero():
    flat = torch.full((1, 1, 12, 10), 0.5)
    for mode in ("authors", "exact"):
        assert local_mutual_information(flat, flat, mode=mode)[..., 2:-2, 2:-2].abs().max() < 1e-6
        other = torch.full_like(flat, 0.2)
        assert local_mutual_information(flat, other, mode=mode)[..., 2:-2, 2:-2].abs().max() < 1e-6


def test_identical_random_patches_near_053():
    x = _rand((1, 1, 40, 40), 9, dtype=torch.float32)
    for mode in ("authors", "exact"):
        m = local_mutual_information(x, x, mode=mode)[INTERIOR].mean().item()
        assert 0.49 < m < 0.56, m  # measured 0.515; the released layer gives ~0.53 on its own test patches
    y = _rand((1, 1, 40, 40), 10, dtype=torch.float32)
    noise = local_mutual_information(x, y)[INTERIOR].mean().item()
    assert 0.36 < noise < 0.44, noise  # measured 0.396; ~0.41 for the released layer's patches


def test_far_outside_range_gives_two():
    s = torch.full((2, 1, 8, 6), 5.0)
    t = torch.full((2, 1, 8, 6), -4.0)
    for a, b in ((s, t), (s, s), (t, t)):
        out = local_mutual_information(a, b)
        assert torch.allclose(out[INTERIOR], torch.full_like(out[INTERIOR], 2.0), atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 7])
def test_gradcheck_exact_mode(chunk):
    # Interior values away from ties; chunk=7 also exercises the checkpointed path.
    x = _rand((1, 1, 5, 5), 11, lo=0.1, hi=0.9).requires_grad_(True)
    y = _rand((1, 1, 5, 5), 12, lo=0.1, hi=0.9).requires_grad_(True)

    def f(a, b):
        return local_mutual_information(a, b, mode="exact", max_chunk_pixels=chunk)

    assert torch.autograd.gradcheck(f, (x, y), eps=1e-6, atol=1e-5, rtol=1e-3)
    gx, gy = torch.autograd.grad(f(x, y).sum(), (x, y))
    assert gx.abs().sum() > 0 and gy.abs().sum() > 0


@pytest.mark.parametrize("mode", ["authors", "exact"])
def test_chunked_equals_unchunked(mode):
    x, y = _rand((2, 1, 9, 13), 13, torch.float32), _rand((2, 1, 9, 13), 14, torch.float32)
    whole = local_mutual_information(x, y, mode=mode, max_chunk_pixels=10**9)
    for chunk in (None, 1, 5, 64):
        part = local_mutual_information(x, y, mode=mode, max_chunk_pixels=chunk)
        torch.testing.assert_close(part, whole, atol=1e-6, rtol=0)


def test_chunked_gradients_equal_unchunked():
    x = _rand((2, 1, 6, 7), 15).requires_grad_(True)
    y = _rand((2, 1, 6, 7), 16).requires_grad_(True)
    grads = []
    for chunk in (None, 5):
        out = local_mutual_information(x, y, mode="exact", max_chunk_pixels=chunk)
        grads.append(torch.autograd.grad((out * torch.arange(out.numel()).view_as(out)).sum(), (x, y)))
    for g_whole, g_part in zip(*grads):
        torch.testing.assert_close(g_part, g_whole, atol=1e-10, rtol=1e-8)


def test_grad_and_no_grad_paths_agree():
    x, y = _rand((1, 1, 9, 8), 17), _rand((1, 1, 9, 8), 18)
    with torch.no_grad():
        fast = local_mutual_information(x, y, mode="exact")
    slow = local_mutual_information(x.requires_grad_(True), y, mode="exact")
    # The no-grad path drops the "+ eps" inside the joint entropy's log (one pass fewer over
    # the joint); in float64 that moves the map by ~1e-8, far below the 1e-5 parity tolerance.
    torch.testing.assert_close(slow.detach(), fast, atol=1e-7, rtol=0)
    assert (slow.detach() - fast).abs().max() > 0  # the two paths really are different code


# --------------------------------------------------------------------------- API


def test_module_wrapper_and_dtypes():
    x, y = _rand((2, 1, 5, 6), 19, torch.float32), _rand((2, 1, 5, 6), 20, torch.float32)
    layer = LocalMutualInformation(mode="exact", window=3, bins=27, sigma=2.0)
    torch.testing.assert_close(layer(x, y), local_mutual_information(x, y, mode="exact"))
    half = local_mutual_information(x.half(), y.half())
    assert half.dtype == torch.float16 and half.shape == x.shape
    torch.testing.assert_close(
        half.float(), local_mutual_information(x.half().float(), y.half().float()), atol=1e-3, rtol=0
    )


def test_invalid_arguments():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError):
        local_mutual_information(x, x, mode="authors", window=5)
    with pytest.raises(ValueError):
        LocalMutualInformation(mode="authors", window=5)
    with pytest.raises(ValueError):
        local_mutual_information(x, x, mode="other")
    with pytest.raises(ValueError):
        local_mutual_information(x, x, mode="exact", window=4)
    with pytest.raises(ValueError):
        local_mutual_information(x, torch.rand(1, 1, 4, 5))
    with pytest.raises(ValueError):
        local_mutual_information(torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = _rand((2, 1, 16, 12), 21, torch.float32), _rand((2, 1, 16, 12), 22, torch.float32)
    for mode in ("authors", "exact"):
        cpu = local_mutual_information(x, y, mode=mode)
        gpu = local_mutual_information(x.cuda(), y.cuda(), mode=mode)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- source-bin window


def _smooth_pair(seed: int, size: int = 20):
    """A smooth 'clean slice' (two tissue levels and a dark background) and a noised copy of it."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    clean = torch.where(r < size / 3, 0.75, torch.where(r < size / 2.2, 0.45, 0.0)).double()[None, None]
    clean = (clean + 0.01 * torch.randn(clean.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    noisy = 0.9 * clean + 0.3 * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    return clean, noisy


def test_source_window_is_used_and_changes_nothing(monkeypatch):
    import lmid.lmi as lmi_module

    clean, noisy = _smooth_pair(21)
    calls = []
    real = lmi_module._source_windows

    def spy(u_min, u_max, bins, std, widths=None):
        start, width = real(u_min, u_max, bins, std, widths)
        calls.append(float((width < bins).float().mean()))
        return start, width

    monkeypatch.setattr(lmi_module, "_source_windows", spy)
    windowed = local_mutual_information(clean, noisy)
    assert calls and min(calls) > 0.3  # flat areas take a narrow window (edges do not)
    monkeypatch.setattr(lmi_module, "SOURCE_WINDOWS", ())
    full = local_mutual_information(clean, noisy)
    # Measured: 2e-9 in float64 (the left-out joint mass is below 27 * 1e-9 of the total).
    torch.testing.assert_close(windowed, full, atol=1e-8, rtol=0)
    np.testing.assert_allclose(windowed.numpy(), lmi_reference(clean.numpy(), noisy.numpy()), atol=1e-5, rtol=0)


def test_source_window_bounds_the_significant_bins():
    from lmid.lmi import WINDOW_TAU, _parzen, _source_windows

    centres = torch.linspace(0, 255, 27, dtype=torch.float64)
    u_min = torch.tensor([100.0, 0.0, 250.0, 10.0, -3.0, 120.0], dtype=torch.float64)
    u_max = torch.tensor([104.0, 255.0, 255.0, 40.0, 20.0, 300.0], dtype=torch.float64)
    start, width = _source_windows(u_min, u_max, 27, 8.0)
    # A flat patch needs 12 bins, a patch over the whole range all 27; at the top the window
    # moves down to fit; out-of-range intensities always take every bin.
    assert width.tolist()[:3] == [12, 27, 12] and width[4] == 27 and width[5] == 27
    assert start[2].item() == 27 - 12
    # Brute force: every bin outside the window is below the threshold for every value in the patch.
    for k in range(4):
        for value in torch.linspace(u_min[k].item(), u_max[k].item(), 50, dtype=torch.float64):
            kern = _parzen(value[None], centres, 8.0)[0]
            outside = torch.ones(27, dtype=torch.bool)
            outside[start[k] : start[k] + width[k]] = False
            assert float(torch.cat([kern[outside], kern.new_zeros(1)]).max()) < WINDOW_TAU


def test_parzen_table_matches_direct_kernels():
    from lmid.lmi import _parzen, _parzen_flat

    centres = torch.linspace(0, 255, 27)
    x = torch.trunc(torch.randn(5, 7, 9, generator=torch.Generator().manual_seed(3)) * 200 + 100)
    torch.testing.assert_close(
        _parzen_flat(x, centres, 8.0, table=True), _parzen(x.reshape(-1), centres, 8.0), atol=0, rtol=0
    )
