"""Heads: the simulated head, skull stripping, N4, the brain-mask modes and parallel subjects."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from volumes import SHAPE, grid, image, ixi_folder, params, tissue, world

from lmid.config import Params, load_params
from lmid.data import phantom
from lmid.data.brainmask import head_mask, n4_correct, strip_skull
from lmid.data.prepare import prepare
from lmid.data.reader import mask_mode
from lmid.errors import ParamsError


def _dice(a, b) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _head_params(**simulate) -> Params:
    p = load_params("params.yaml")  # the demo's 2 mm voxels: the resolution the Dice bar is set at
    return p.model_copy(update={"simulate": p.simulate.model_copy(update={"head": True, **simulate})})


@pytest.fixture(scope="module")
def head_subject():
    return phantom.simulate_subject(_head_params(), 0)


# ------------------------------------------------------------------------------ the head model
def test_head_shells_have_their_thickness():
    """Around a ball brain of radius R the shells are spherical: their volumes are analytic."""
    r_mm, n = 30.0, 101
    c = (n - 1) / 2
    dist = np.linalg.norm(np.indices((n, n, n)) - c, axis=0)
    brain = (dist <= r_mm).astype(np.float32)
    shells = phantom.head_shells(brain)
    total = sum(shells.values())
    assert total.max() <= 1 + 1e-6 and np.all(total[brain > 0.5] == 0)  # disjoint from the brain
    inner = brain.sum() ** (1 / 3) * (3 / (4 * math.pi)) ** (1 / 3)  # radius of the voxelised ball
    expected: dict[str, float] = {}
    for t, a, b in phantom.HEAD_SHELLS:
        expected[t] = expected.get(t, 0.0) + 4 / 3 * math.pi * ((inner + b) ** 3 - (inner + a) ** 3)
    for t, vol in expected.items():
        if t == "csf":  # also fills the voxel staircase of the ball, which the closing smooths over
            assert vol <= shells[t].sum() <= 1.15 * vol
        else:
            assert shells[t].sum() == pytest.approx(vol, rel=0.08), t


def test_head_keeps_the_brain_and_its_label(head_subject):
    """T1: bright fat and marrow, dark bone; the tissue map is the brain's; the brain's tissue draws
    are those of the same subject without a head."""
    h = head_subject
    plain = phantom.simulate_subject(load_params("params.yaml"), 0)
    assert h["facts"]["tissues"] == plain["facts"]["tissues"] and h["id"] == plain["id"]
    label, t1, pd = h["label"], h["images"]["T1"].astype(float), h["images"]["PD"].astype(float)
    assert set(np.unique(label)) == {0, 1, 2, 3}
    # Brain volume close to the skull-stripped subject's: same rotation and scale; the larger grid
    # has more knots, so the smooth deformation is another draw.
    vox = h["affine"][0, 0] ** 3
    assert (label > 0).sum() == pytest.approx((plain["label"] > 0).sum(), rel=0.06)
    brain = label > 0
    depth = ndimage.distance_transform_edt(~brain) * h["affine"][0, 0]
    outside = ~brain & (depth > 2.5)
    wm = t1[label == 3].mean()
    fat_band = outside & (depth > 8) & (depth < 12)
    assert t1[fat_band].max() > 1.3 * wm  # subcutaneous fat brighter than WM on T1
    # Along rays from the brain's centre, T1 dips (bone) before it peaks (fat).
    assert t1[outside & (depth < 5)].mean() < t1[fat_band].mean()
    assert (t1[outside] > 0.5 * wm).sum() * vox > 1e5  # a real scalp: > 100 ml of bright tissue
    assert pd[label == 1].mean() > pd[label == 3].mean()  # the brain's contrasts are unchanged


# ---------------------------------------------------------------------------- skull stripping
def test_strip_finds_the_brain_of_the_simulated_head(head_subject):
    """The bar: Dice >= 0.95 against the true brain mask at the source resolution (2 mm)."""
    h = head_subject
    mask, info = strip_skull(h["images"]["T1"].astype(np.float32), h["affine"])
    truth = h["label"] > 0
    assert mask.shape == truth.shape and mask.dtype == bool
    assert _dice(mask, truth) >= 0.95, (_dice(mask, truth), info)
    assert "BET" in info["method"]
    # The head mask is the whole head: far larger than the brain.
    assert head_mask(h["images"]["T1"].astype(np.float32)).sum() > 1.3 * truth.sum()


def test_strip_on_anisotropic_voxels_returns_the_input_grid():
    """BET runs on an isotropic copy; the mask comes back on the volume's own (anisotropic) grid."""
    shape, aff = (30, 34, 18), np.diag([3.0, 3.0, 5.0, 1.0])
    aff[:3, 3] = -np.diag(aff)[:3] * (np.array(shape) - 1) / 2
    lab = tissue(world(shape, aff) * 0.9).reshape(shape)
    vol = image("T1", shape, aff, seed=3, world_map=lambda p: p * 0.9)
    mask, info = strip_skull(vol, aff)
    assert mask.shape == shape and "3 mm isotropic" in info["method"]
    assert _dice(mask, lab > 0) > 0.8


# -------------------------------------------------------------------------------------- N4
def test_n4_divides_out_a_known_field():
    """Piecewise-constant tissues times a smooth field: N4 brings each tissue's spread down."""
    shape, aff = (40, 48, 30), np.diag([3.0, 3.0, 3.0, 1.0])
    aff[:3, 3] = -3.0 * (np.array(shape) - 1) / 2
    lab = tissue(world(shape, aff) * 0.45).reshape(shape)
    clean = np.asarray([0, 250, 550, 850], float)[lab]
    x = np.linspace(-1, 1, shape[0])[:, None, None]
    field = np.exp(0.3 * x + 0.1 * np.linspace(-1, 1, shape[2])[None, None, :]) * np.ones(shape)
    vol = (clean * field + np.random.default_rng(0).normal(0, 5, shape)).clip(0).astype(np.float32)
    mask = lab > 0
    out, info = n4_correct(vol, aff, mask)

    def cov(v, t):
        return float(v[lab == t].std() / v[lab == t].mean())

    for t in (2, 3):
        assert cov(out, t) < 0.5 * cov(vol, t), (t, cov(vol, t), cov(out, t))
    lo, hi = info["field_range_in_brain"]
    assert hi / lo > 1.2  # it found a field of roughly the size put in (e^0.6 end to end in x)


# ------------------------------------------------------------------------------- mask modes
def test_auto_mask_modes_and_labels_without_maps():
    p = load_params("params.yaml")
    assert mask_mode(p, use_labels=True) == "labels"
    assert mask_mode(_head_params(), use_labels=True) == "strip"
    ixi = Params.model_validate({"data": {"source": "ixi", "root": "x"}})
    assert mask_mode(ixi, use_labels=False) == "strip"
    brats = Params.model_validate(
        {
            "data": {
                "source": "brats",
                "root": "x",
                "source_modality": "t2",
                "target_modality": "t1",
                "extra_modalities": [],
            }
        }
    )
    assert mask_mode(brats, use_labels=False) == "head"
    explicit = Params.model_validate({"data": {"source": "ixi", "root": "x"}, "prepare": {"brain_mask": "labels"}})
    with pytest.raises(ParamsError, match="prepare.brain_mask: 'labels' needs tissue maps"):
        mask_mode(explicit, use_labels=False)


# --------------------------------------------------------------------------- parallel subjects
def test_parallel_subjects_give_the_same_bytes(tmp_path):
    """Registration (T1 on its own grid) and the slices of 4 subjects: 2 worker processes write
    exactly what one process writes."""
    t1_aff = grid() @ np.diag([1.1, 0.9, 1.0, 1.0])
    raw = ixi_folder(tmp_path / "raw", n=4, mods=("T1", "PD"), t1_grid=(SHAPE, t1_aff))
    p = params(
        **{
            "data.extra_modalities": [],
            "data.registration": True,
            "prepare.brain_mask": "strip",
            "prepare.bias_correction": "n4",
            "prepare.slices": {"train": 4, "val": 2, "test": 2},
        }
    )
    for name, workers in (("one", 1), ("two", 2)):
        prepare(p, raw, tmp_path / name, workers=workers)
    for f in ("train.npz", "val.npz", "test.npz", "manifest.json"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    for entry in manifest["subjects"].values():
        reg = entry["registration"]["T1"]
        assert reg["affine_iterations"] > 0 and reg["affine_metric"] < 0  # Mattes MI is negative when aligned
        assert entry["brain_mask"]["mode"] == "strip" and entry["brain_mask"]["stripped"] == "T1"
        assert entry["brain_mask_coverage"]["T1"] >= 0.9
        assert set(entry["bias_correction"]) == {"PD", "T1"}
    assert manifest["bias_correction"].startswith("N4") and manifest["bias_check"] is None  # no tissue maps


def test_bias_check_matches_both_runs_and_a_direct_count(tmp_path):
    """The manifest's with/without-N4 ceilings: each run measures both, the two runs agree, and the
    applied one equals K-Means fitted and scored by hand on the slices that were written."""
    from lmid.data.slices import load_slices
    from lmid.evaluation.bias_check import bias_check
    from lmid.evaluation.metrics import dice_per_class
    from lmid.evaluation.segment import SEED_OFFSET, fit_segmenter

    raw = ixi_folder(tmp_path / "raw", n=5, labels=True)
    checks = {}
    for mode in ("none", "n4"):
        p = params(**{"data.source": "simulated", "prepare.brain_mask": "auto", "prepare.bias_correction": mode})
        prepare(p, raw, tmp_path / mode, bias_check=bias_check)
        checks[mode] = json.loads((tmp_path / mode / "manifest.json").read_text())["bias_check"]
        train, test = (load_slices(tmp_path / mode / f"{s}.npz") for s in ("train", "test"))
        km = fit_segmenter(
            train.target,
            train.mask,
            p.segment.n_clusters,
            p.segment.max_voxels,
            p.seed + SEED_OFFSET,
            tuple(p.segment.tissue_order),
        )
        direct = np.mean(
            [dice_per_class(km.predict(test.target[i], test.mask[i]), test.label[i])["mean"] for i in range(len(test))]
        )
        key = "dice_ceiling_with_n4" if mode == "n4" else "dice_ceiling_without_n4"
        assert checks[mode]["applied"] == mode and checks[mode][key] == pytest.approx(direct, abs=1e-12)
    for key in ("dice_ceiling_with_n4", "dice_ceiling_without_n4"):
        assert checks["none"][key] == pytest.approx(checks["n4"][key], abs=1e-12), key
    # Without the check (prepare called on its own), the same slices and manifest, the check null.
    prepare(p, raw, tmp_path / "unchecked")
    for f in ("train.npz", "val.npz", "test.npz"):
        assert (tmp_path / "unchecked" / f).read_bytes() == (tmp_path / "n4" / f).read_bytes(), f
    manifest = json.loads((tmp_path / "unchecked" / "manifest.json").read_text())
    assert manifest.pop("bias_check") is None
    expected = json.loads((tmp_path / "n4" / "manifest.json").read_text())
    expected.pop("bias_check")
    assert manifest == expected


def test_a_bad_volume_in_a_worker_is_named_and_nothing_is_written(tmp_path):
    """An error raised in a worker process reaches the caller whole (the file and the problem)."""
    from lmid.errors import InputFileError

    raw = ixi_folder(tmp_path / "raw", n=4, mods=("T1", "PD"))
    bad = raw / "IXI003-Guys-0801-PD.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage" * 20)
    with pytest.raises(InputFileError) as info:
        prepare(
            params(**{"data.extra_modalities": [], "prepare.slices": {"train": 4, "val": 2, "test": 2}}),
            raw,
            tmp_path / "out",
            workers=2,
        )
    assert info.value.path == str(bad) and str(info.value).startswith(str(bad))
    assert not (tmp_path / "out").exists()
