"""Per-slice metrics against hand-computed values and an independent SSIM implementation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lmid.data.slices import load_slices, split_fingerprint
from lmid.errors import InputFileError
from lmid.evaluation.metrics import COLUMNS, dice, dice_per_class, evaluate_translations, psnr, score_slice, ssim
from lmid.evaluation.segment import KMeansSegmenter
from lmid.io import save_npz


# ------------------------------------------------------------------------------------------ Dice
def test_dice_hand_values():
    pred = np.array([1, 1, 0, 0, 1], bool)
    ref = np.array([1, 0, 1, 0, 1], bool)
    assert dice(pred, ref) == pytest.approx(2 * 2 / (3 + 3))
    assert dice(pred, pred) == 1.0
    assert dice(pred, ~pred) == 0.0


def test_dice_edge_cases():
    empty = np.zeros((4, 4), bool)
    some = empty.copy()
    some[1, 1] = True
    assert dice(empty, empty) == 1.0  # nothing to find, nothing found
    assert dice(some, empty) == 0.0
    assert dice(empty, some) == 0.0


def test_dice_per_class_and_mean():
    ref = np.array([[0, 1, 1, 2], [2, 2, 3, 3]], np.uint8)
    pred = np.array([[0, 1, 2, 2], [2, 3, 3, 3]], np.uint8)
    d = dice_per_class(pred, ref)
    # (row, col) sets -- CSF: pred {01}, ref {01,02} -> 2*1/3; GM: pred {02,03,10}, ref {03,10,11} -> 2*2/6;
    # WM: pred {11,12,13}, ref {12,13} -> 2*2/5
    assert d["csf"] == pytest.approx(2 / 3)
    assert d["gm"] == pytest.approx(4 / 6)
    assert d["wm"] == pytest.approx(4 / 5)
    assert d["mean"] == pytest.approx((2 / 3 + 4 / 6 + 4 / 5) / 3)
    # A class absent from both counts as perfect (1.0) in the mean.
    no_wm = np.where(ref == 3, 2, ref)
    assert dice_per_class(no_wm, no_wm) == {"csf": 1.0, "gm": 1.0, "wm": 1.0, "mean": 1.0}


# ------------------------------------------------------------------------------------------ PSNR
def test_psnr_hand_values():
    ref = np.zeros((8, 8))
    img = np.full((8, 8), 0.1)
    assert psnr(ref, img) == pytest.approx(20.0)  # MSE 0.01 -> 10 log10(1 / 0.01)
    img2 = img.copy()
    img2[:4] = 0.0  # half the pixels exact, half off by 0.1 -> MSE 0.005
    assert psnr(ref, img2) == pytest.approx(10 * math.log10(1 / 0.005))
    mask = np.zeros((8, 8), bool)
    mask[4:] = True  # only the wrong half
    assert psnr(ref, img2, mask) == pytest.approx(20.0)
    mask[:] = False
    mask[:4] = True  # only the exact half: MSE floored at 1e-10
    assert psnr(ref, img2, mask) == pytest.approx(100.0)
    assert math.isnan(psnr(ref, img2, np.zeros((8, 8), bool)))


# ------------------------------------------------------------------------------------------ SSIM
C1, C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2


def test_ssim_constant_images_by_hand():
    """Flat images: variances and covariance are 0, so SSIM = (2ab + C1) / (a² + b² + C1)."""
    a, b = 0.6, 0.3
    x = np.full((16, 16), a)
    y = np.full((16, 16), b)
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert ssim(x, y) == pytest.approx(expected, rel=1e-9)
    mask = np.zeros((16, 16), bool)
    mask[5:9, 5:9] = True
    assert ssim(x, y, mask) == pytest.approx(expected, rel=1e-9)
    assert ssim(x, x) == pytest.approx(1.0)


def _ssim_map_reference(x: np.ndarray, y: np.ndarray, win: int = 7) -> np.ndarray:
    """Wang et al. (2004) with a win×win uniform window and unbiased (sample) covariances, written
    with explicit windows over a mirror-padded image (no scipy, no skimage)."""
    r = win // 2
    xp = np.pad(x, r, mode="symmetric")
    yp = np.pad(y, r, mode="symmetric")
    n = win * win
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            px = xp[i : i + win, j : j + win].ravel()
            py = yp[i : i + win, j : j + win].ravel()
            mx, my = px.mean(), py.mean()
            vx = ((px - mx) ** 2).sum() / (n - 1)
            vy = ((py - my) ** 2).sum() / (n - 1)
            cxy = ((px - mx) * (py - my)).sum() / (n - 1)
            out[i, j] = ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))
    return out


def test_ssim_matches_independent_implementation():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (14, 15))
    y = np.clip(0.7 * x + 0.2 + rng.normal(0, 0.1, x.shape), 0, 1)
    ref_map = _ssim_map_reference(x, y)
    # Whole-slice SSIM: the map's mean without the 3-pixel border (scikit-image's convention).
    assert ssim(x, y) == pytest.approx(ref_map[3:-3, 3:-3].mean(), rel=1e-7)
    mask = np.zeros_like(x, bool)
    mask[2:11, 1:9] = True
    assert ssim(x, y, mask) == pytest.approx(ref_map[mask].mean(), rel=1e-7)


# -------------------------------------------------------------------------------------- per slice
def _segmenter():
    return KMeansSegmenter(centroids=(0.2, 0.5, 0.8), mapping=(1, 2, 3))


def _slice():
    label = np.zeros((12, 12), np.uint8)
    label[2:10, 2:10] = 1
    label[3:9, 3:9] = 2
    label[5:7, 5:7] = 3
    target = np.array([0.0, 0.2, 0.5, 0.8])[label]
    return target, label > 0, label


def test_score_slice_perfect_and_swapped():
    target, mask, label = _slice()
    row = score_slice(target, target, mask, _segmenter(), label=label)
    assert row["dice_gt_mean"] == 1.0 and row["dice_km_mean"] == 1.0
    assert row["psnr"] == pytest.approx(100.0) and row["ssim"] == pytest.approx(1.0)
    # GM and WM intensities swapped: CSF still right, GM/WM Dice 0.
    swapped = np.array([0.0, 0.2, 0.8, 0.5])[label]
    row = score_slice(swapped, target, mask, _segmenter(), label=label)
    assert row["dice_gt_csf"] == 1.0 and row["dice_gt_gm"] == 0.0 and row["dice_gt_wm"] == 0.0
    assert row["dice_gt_mean"] == pytest.approx(1 / 3)
    without_labels = score_slice(swapped, target, mask, _segmenter())
    assert math.isnan(without_labels["dice_gt_mean"]) and without_labels["dice_km_mean"] == pytest.approx(1 / 3)


def _write_inputs(tmp_path, n=3, shape_ok=True):
    from lmid.data.slices import SliceSet

    target, mask, label = _slice()
    split = SliceSet(
        source=np.repeat(1 - target[None], n, 0).astype(np.float32),
        target=np.repeat(target[None], n, 0).astype(np.float32),
        mask=np.repeat(mask[None], n, 0),
        label=np.repeat(label[None], n, 0),
        subject=np.array(["IXI001"] * n),
        slice_index=np.arange(10, 10 + n),
        has_label=True,
    )
    split.save(tmp_path / "test.npz")
    _segmenter().save(tmp_path / "kmeans.json")
    img = split.target[[2, 0]].copy()
    img[1] += 0.1
    if not shape_ok:
        img = img[:, :-1]
    save_npz(
        tmp_path / "tr.npz",
        image=img,
        std=np.zeros_like(img),
        index=np.array([2, 0]),
        nfe=np.array([25, 25]),
        wall_s=np.array([0.5, 0.5]),
        method=np.asarray("sdedit"),
        split_fingerprint=np.asarray(split_fingerprint(load_slices(tmp_path / "test.npz"))),
    )
    return split


def test_evaluate_writes_one_row_per_slice(tmp_path):
    _write_inputs(tmp_path)
    df = evaluate_translations(
        "sdedit", tmp_path / "tr.npz", tmp_path / "test.npz", tmp_path / "kmeans.json", tmp_path / "out" / "sdedit.csv"
    )
    back = pd.read_csv(tmp_path / "out" / "sdedit.csv", dtype={"subject": str})
    assert list(back.columns) == list(COLUMNS)
    assert back["index"].tolist() == [2, 0] and back["slice_index"].tolist() == [12, 10]
    assert back["psnr"].iloc[0] == pytest.approx(100.0)
    assert back["psnr"].iloc[1] == pytest.approx(20.0, abs=1e-5)  # +0.1 everywhere (no clipping reached 1)
    assert back["nfe"].tolist() == [25, 25] and back["wall_s"].tolist() == [0.5, 0.5]
    assert np.allclose(back["dice_gt_mean"], df["dice_gt_mean"])


def test_evaluate_rejects_mismatched_inputs(tmp_path):
    _write_inputs(tmp_path, shape_ok=False)
    with pytest.raises(InputFileError, match=r"tr\.npz: slices are \(11, 12\)"):
        evaluate_translations(
            "sdedit", tmp_path / "tr.npz", tmp_path / "test.npz", tmp_path / "kmeans.json", tmp_path / "x.csv"
        )
    assert not (tmp_path / "x.csv").exists()


# ------------------------------------------------------------------------------ tissue contrast
def _tissue_slice():
    """Labels in three bands (CSF, GM, WM) and a T1-like target: CSF 0.2, GM 0.5, WM 0.8."""
    label = np.zeros((12, 12), np.uint8)
    label[2:10, 2:4], label[2:10, 4:7], label[2:10, 7:10] = 1, 2, 3
    target = np.choose(label, [0.0, 0.2, 0.5, 0.8]).astype(np.float32)
    return label, target


def test_tissue_contrast_hand_values():
    from lmid.evaluation.metrics import tissue_contrast

    label, target = _tissue_slice()
    same = tissue_contrast(target, target, label)
    assert same == {"contrast_wm_gm": pytest.approx(1.0), "contrast_gm_csf": pytest.approx(1.0), "tissue_order": 1.0}
    # Half the contrast around the same mean: both ratios 0.5, order kept.
    half = np.where(label > 0, 0.5 + 0.5 * (target - 0.5), 0.0)
    got = tissue_contrast(half, target, label)
    assert got["contrast_wm_gm"] == pytest.approx(0.5) and got["contrast_gm_csf"] == pytest.approx(0.5)
    # A flat (saturated) disc has no contrast and not the T1 order, whatever its SSIM.
    flat = np.where(label > 0, 1.0, 0.0)
    got = tissue_contrast(flat, target, label)
    assert got == {"contrast_wm_gm": 0.0, "contrast_gm_csf": 0.0, "tissue_order": 0.0}
    # PD-like order (CSF brightest) is reversed contrast.
    inverted = np.where(label > 0, 1.0 - target, 0.0)
    got = tissue_contrast(inverted, target, label)
    assert got["contrast_wm_gm"] == pytest.approx(-1.0) and got["tissue_order"] == 0.0
    # A missing class gives NaN rather than a number.
    assert math.isnan(tissue_contrast(target, target, np.where(label == 1, 2, label))["contrast_gm_csf"])


def test_score_slice_reports_the_ceiling():
    label, target = _tissue_slice()
    seg = KMeansSegmenter(centroids=(0.2, 0.5, 0.8), mapping=(1, 2, 3))
    mask = label > 0
    row = score_slice(np.zeros_like(target), target, mask, seg, label=label)
    # K-Means on the real target finds the three bands exactly: the ceiling is 1 whatever the translation.
    assert row["dice_ceiling"] == pytest.approx(1.0)
    assert row["tissue_order"] == 0.0
    assert set(COLUMNS) >= set(row)
