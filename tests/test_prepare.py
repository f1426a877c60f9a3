"""``lmid prepare`` on small synthetic IXI-, simulated- and BraTS-layout folders written here."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from conftest import TINY, run_lmid
from volumes import SHAPE, grid, image, ixi_folder, params, save, splits, tissue, world

from lmid.config import load_params
from lmid.data.prepare import prepare
from lmid.data.splits import deal_slices, split_subjects, spread
from lmid.errors import InputFileError, LmidError, ParamsError


# ------------------------------------------------------------------------------------- IXI
def test_ixi_counts_splits_and_ranges(tmp_path, caplog):
    raw = ixi_folder(tmp_path / "raw", n=8)
    (raw / "IXI008-Guys-0806-T2.nii.gz").unlink()  # skipped: no T2 (an extra modality)
    (raw / "IXI009-Guys-0807-T1.nii.gz").unlink()  # skipped: no target
    (raw / "IXI005-Guys-0803-PD.nii.gz").rename(raw / "IXI005_PD_renamed.nii.gz")  # unparseable -> IXI005 skipped
    out = tmp_path / "slices"
    with caplog.at_level(logging.WARNING):
        summary = prepare(params(), raw, out)
    assert "IXI005_PD_renamed.nii.gz" in caplog.text and "IXI008" in caplog.text and "IXI009" in caplog.text
    data = splits(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s: len(d) for s, d in data.items()} == {"train": 10, "val": 3, "test": 4}
    assert manifest["counts"]["train"]["slices"] == 10 and summary["counts"]["test"]["slices"] == 4
    assert manifest["skipped"] == {"IXI005": "missing PD", "IXI008": "missing T2", "IXI009": "missing T1"}
    assert manifest["n_skipped"] == 3 and manifest["unparsed_files"] == ["IXI005_PD_renamed.nii.gz"]
    # Subject-level split: 5 usable subjects -> 3/1/1, disjoint, each with slices.
    subjects = {s: set(d.subject.tolist()) for s, d in data.items()}
    assert all(subjects.values())
    assert not (subjects["train"] & subjects["val"]) and not (subjects["train"] & subjects["test"])
    assert not (subjects["val"] & subjects["test"])
    assert {s: set(v) for s, v in manifest["splits"].items()} == subjects
    assert manifest["modalities"] == {"source": "PD", "target": "T1", "extra": ["T2"]}
    assert manifest["slice_size"] == [24, 24] and manifest["has_label"] is False
    for split, d in data.items():
        assert d.source.shape[1:] == (24, 24) and d.mask.shape == d.source.shape and d.label.shape == d.source.shape
        assert d.mask.dtype == bool and d.label.dtype == np.uint8 and not d.label.any() and not d.has_label
        for arr in (d.source, d.target, *d.extra.values()):
            assert arr.dtype == np.float32 and arr.min() >= 0 and arr.max() <= 1
        assert sorted(d.extra) == ([] if split == "train" else ["T2"])
        assert d.mask.mean(axis=(1, 2)).min() > 0.1  # brain range only
        for sid, k in zip(d.subject, d.slice_index):
            entry = manifest["subjects"][sid]
            assert entry["split"] == split and k in entry["slices"]
            assert entry["brain_planes"]["first"] <= k <= entry["brain_planes"]["last"] < entry["n_axial"] == SHAPE[2]
            for mod in ["PD", "T1"] + (["T2"] if split != "train" else []):
                assert entry["normalisation"][mod]["lo"] < entry["normalisation"][mod]["hi"]
            assert np.asarray(entry["slice_affine"]).shape == (4, 4)
    # Train slices: spread over the three train subjects (4/3/3) and distinct planes per subject.
    counts = sorted(np.unique(data["train"].subject, return_counts=True)[1].tolist())
    assert counts == [3, 3, 4]
    pairs = list(zip(data["train"].subject, data["train"].slice_index))
    assert len(set(pairs)) == len(pairs)
    # Target-only training data must not hold source images: no train target is (nearly) a source slice.
    sources = np.concatenate([d.source for d in data.values()] + [d.extra["T2"] for d in (data["val"], data["test"])])
    diff = np.abs(data["train"].target[:, None] - sources[None]).mean(axis=(2, 3))
    assert diff.min() > 0.03, diff.min()
    # T1 is bright in white matter and PD is not: the modalities were not mixed up.
    wm = data["train"].target > 0.7
    assert data["train"].source[wm].mean() < data["train"].target[wm].mean()


def test_simulated_labels(tmp_path):
    raw = ixi_folder(tmp_path / "raw", n=5, labels=True)
    out = tmp_path / "slices"
    prepare(params(**{"data.source": "simulated", "prepare.brain_mask": "auto"}), raw, out)
    data = splits(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["has_label"] is True and manifest["brain_mask"] == "tissue map > 0"
    for d in data.values():
        assert d.has_label and set(np.unique(d.label)) <= {0, 1, 2, 3} and {1, 2, 3} <= set(np.unique(d.label))
        np.testing.assert_array_equal(d.mask, d.label > 0)
    # Tissue contrast survives cropping/resizing: T1 brightest in WM, darkest in CSF.
    t = data["train"]
    means = [t.target[t.label == c].mean() for c in (1, 2, 3)]
    assert means[0] < means[1] < means[2]


def test_simulated_needs_labels(tmp_path, caplog):
    raw = ixi_folder(tmp_path / "raw", n=5, labels=True)
    (raw / "IXI002-Guys-0800-label.nii.gz").unlink()
    with caplog.at_level(logging.WARNING):
        prepare(params(**{"data.source": "simulated"}), raw, tmp_path / "slices")
    manifest = json.loads((tmp_path / "slices" / "manifest.json").read_text())
    assert manifest["skipped"] == {"IXI002": "missing label"}


def test_slice_affine_maps_slices_to_world(tmp_path):
    """A volume whose intensity is a linear function of world position, stored in LPS voxel order
    with permuted axes: every prepared pixel must show the value at the world point its affine gives."""
    shape = (14, 26, 22)  # stored as (S, A, R) axes, reversed
    aff = np.zeros((4, 4))
    aff[:3, 0], aff[:3, 1], aff[:3, 2] = (0, 0, 3.0), (0, -3.5, 0), (-3.2, 0, 0)
    aff[3, 3] = 1
    aff[:3, 3] = -aff[:3, :3] @ ((np.array(shape) - 1) / 2)

    def field(p):
        x, y, z = p.T
        inside = (x / 30) ** 2 + (y / 40) ** 2 + (z / 18) ** 2 < 1
        return np.where(inside, 100 + 1.5 * x + 0.8 * y + 0.5 * z, 0.0)

    raw = tmp_path / "raw"
    for s in range(3):
        for mod in ("PD", "T1"):
            vals = field(world(shape, aff)).reshape(shape) * (1 if mod == "PD" else 2)
            save(raw / f"IXI{s + 2:03d}-HH-{s:04d}-{mod}.nii.gz", vals.astype(np.float32), aff)
    out = tmp_path / "slices"
    prepare(
        params(
            **{
                "data.extra_modalities": [],
                "prepare.slices": {"train": 6, "val": 2, "test": 2},
                "prepare.percentiles": [0.0, 100.0],
                "prepare.size": 32,
            }
        ),
        raw,
        out,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    checked = 0
    for d in splits(out).values():
        for img, mask, sid, k in zip(d.source, d.mask, d.subject, d.slice_index):
            entry = manifest["subjects"][sid]
            A = np.asarray(entry["slice_affine"])
            # Rows run anterior -> posterior, columns to the right (RAS+ x).
            assert A[1, 0] < 0 and A[0, 1] > 0
            lo, hi = entry["normalisation"]["PD"]["lo"], entry["normalisation"]["PD"]["hi"]
            inner = binary_erosion(mask, iterations=3)
            pq = np.argwhere(inner)
            pts = np.c_[pq, np.full(len(pq), k), np.ones(len(pq))] @ A.T
            expected = (field(pts[:, :3]) - lo) / (hi - lo)
            np.testing.assert_allclose(img[inner], expected, atol=0.02)
            checked += len(pq)
            assert entry["n_axial"] == shape[0]  # stored axis 0 runs along S: the axial axis
    assert checked > 500


def test_registration_brings_t1_onto_the_pd_grid(tmp_path):
    """IXI-like: T1 on its own sagittal grid, slightly moved; registered to PD it shows the same anatomy."""
    t1_shape = (24, 20, 26)  # (A, S, L) like a sagittal acquisition
    t1_aff = np.zeros((4, 4))
    t1_aff[:3, 0], t1_aff[:3, 1], t1_aff[:3, 2], t1_aff[3, 3] = (0, 4.2, 0), (0, 0, 3.6), (-3.8, 0, 0), 1
    t1_aff[:3, 3] = -t1_aff[:3, :3] @ ((np.array(t1_shape) - 1) / 2)
    c, s = np.cos(np.deg2rad(3)), np.sin(np.deg2rad(3))
    move = lambda p: p @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + np.array([3.0, -4.0, 2.0])  # noqa: E731
    raw = ixi_folder(tmp_path / "raw", n=3, mods=("T1", "PD"), t1_grid=(t1_shape, t1_aff), world_map=move)
    with pytest.raises(InputFileError) as info:
        prepare(params(**{"data.extra_modalities": []}), raw, tmp_path / "off")
    msg = str(info.value)
    sid = msg.split("(subject ")[1][:6]
    assert f"{sid}-Guys-08" in msg and "-T1.nii.gz: shape" in msg and "-PD.nii.gz" in msg, msg
    assert not (tmp_path / "off").exists()

    out = tmp_path / "slices"
    p = params(
        **{"data.extra_modalities": [], "data.registration": True, "prepare.slices": {"train": 4, "val": 2, "test": 2}}
    )
    prepare(p, raw, out)
    prepare(p, raw, tmp_path / "again")  # registration is deterministic too: same bytes
    for f in ("train.npz", "val.npz", "test.npz", "manifest.json"):
        assert (out / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["subjects"].values():
        assert entry["registration"]["T1"]["affine_iterations"] > 0
    by_tissue = {1: [], 2: [], 3: []}
    for d in splits(out).values():
        for img, sid, k in zip(d.target, d.subject, d.slice_index):
            A = np.asarray(manifest["subjects"][sid]["slice_affine"])
            pq = np.argwhere(np.ones(img.shape, bool))
            lab = tissue((np.c_[pq, np.full(len(pq), k), np.ones(len(pq))] @ A.T)[:, :3]).reshape(img.shape)
            for t in by_tissue:
                core = binary_erosion(lab == t, iterations=1)
                by_tissue[t].append(img[core])
    csf, gm, wm = (np.concatenate(by_tissue[t]).mean() for t in (1, 2, 3))
    assert csf < gm < wm and wm - csf > 0.3, (csf, gm, wm)


# ----------------------------------------------------------------------------------- BraTS
def brats_folder(root, n=4):
    names23 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
    for s in range(n):
        new = s % 2 == 0
        case = f"BraTS-GLI-{s:05d}-000" if new else f"BraTS2021_{s:05d}"
        for j, mod in enumerate(("t1", "t1ce", "t2", "flair", "seg")):
            name = f"{case}-{names23[mod]}.nii.gz" if new else f"{case}_{mod}.nii.gz"
            data = (
                tissue(world(SHAPE, grid())).reshape(SHAPE).astype(np.float32) * 0
                if mod == "seg"
                else image(mod, SHAPE, grid(), 10 * s + j)
            )
            if mod == "seg":
                data[10:13, 10:13, 5:8] = 2  # a "tumour"
            save(root / case / name, data, grid())
    return root


@pytest.mark.parametrize(
    "source,target,extras", [("flair", "t1ce", ["t2"]), ("t2", "t1", []), ("t1", "flair", ["t1ce", "t2"])]
)
def test_brats_any_modality(tmp_path, source, target, extras):
    raw = brats_folder(tmp_path / "raw")
    out = tmp_path / "slices"
    prepare(
        params(
            **{
                "data.source": "brats",
                "data.source_modality": source,
                "data.target_modality": target,
                "data.extra_modalities": extras,
                "prepare.slices": {"train": 4, "val": 2, "test": 2},
            }
        ),
        raw,
        out,
    )
    data = splits(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["has_label"] is False and "tumour" in manifest["label_note"]
    assert {len(d) for d in data.values()} == {4, 2} and sum(len(d) for d in data.values()) == 8
    for split, d in data.items():
        assert not d.has_label and not d.label.any()
        assert sorted(d.extra) == ([] if split == "train" else sorted(extras))
    entry = manifest["subjects"]["BraTS-GLI-00000-000"]
    assert entry["tumour_segmentation"] == "BraTS-GLI-00000-000/BraTS-GLI-00000-000-seg.nii.gz"
    assert entry["site"] == "GLI" and entry["registration"][target] == "same grid as the source"
    # the target really is the requested modality: its contrast ordering between tissues
    t = data["train"]
    assert np.abs(t.target - t.source).mean() > 0.03


def test_brats_rejects_ixi_modality_names(tmp_path):
    raw = brats_folder(tmp_path / "raw", n=3)
    with pytest.raises(ParamsError, match="data.source_modality"):
        prepare(params(**{"data.source": "brats"}), raw, tmp_path / "slices")


# ------------------------------------------------------------------------------- bad input
def _corrupt(raw):
    f = raw / "IXI003-Guys-0801-PD.nii.gz"
    f.write_bytes(gzip.compress(b"not a nifti header" * 30))
    return f.name


def _truncated(raw):
    f = raw / "IXI004-Guys-0802-T1.nii.gz"
    f.write_bytes(f.read_bytes()[:300])
    return f.name


def _replace(raw, name, data):
    save(raw / name, data, grid())
    return name


BAD = {
    "corrupt": (_corrupt, "cannot read"),
    "truncated": (_truncated, "cannot read"),
    "2-D": (lambda raw: _replace(raw, "IXI002-Guys-0800-PD.nii.gz", np.ones((22, 26), np.float32)), "3-D"),
    "4-D": (lambda raw: _replace(raw, "IXI002-Guys-0800-T1.nii.gz", np.ones((*SHAPE, 3), np.float32)), "3-D"),
    "nan": (
        lambda raw: _replace(
            raw,
            "IXI003-Guys-0801-T2.nii.gz",
            np.where(np.eye(22, 26)[:, :, None] > 0, np.nan, 1.0) * np.ones(SHAPE, np.float32),
        ),
        "NaN",
    ),
    "other-shape": (
        lambda raw: _replace(raw, "IXI004-Guys-0802-T1.nii.gz", image("T1", (22, 26, 12), grid(), 1)),
        "differs from IXI004-Guys-0802-PD.nii.gz",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_volume_names_the_file_and_writes_nothing(tmp_path, case):
    raw = ixi_folder(tmp_path / "raw", n=3)
    mutate, needle = BAD[case]
    name = mutate(raw)
    out = tmp_path / "slices"
    with pytest.raises(InputFileError) as info:
        prepare(params(**{"prepare.slices": {"train": 4, "val": 1, "test": 1}}), raw, out)
    assert name in str(info.value) and needle in str(info.value), str(info.value)
    assert not out.exists()


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, needle in [(tmp_path / "empty", "no NIfTI"), (tmp_path / "missing", "not found")]:
        with pytest.raises(LmidError, match=needle) as info:
            prepare(params(), folder, tmp_path / "out")
        assert str(folder) in str(info.value)
    raw = ixi_folder(tmp_path / "raw", n=3, mods=("PD", "T2"))
    with pytest.raises(LmidError) as info:
        prepare(params(), raw, tmp_path / "out")
    assert str(raw) in str(info.value) and "missing T1" in str(info.value)
    raw2 = ixi_folder(tmp_path / "raw2", n=2)
    with pytest.raises(LmidError, match="2 usable subject"):
        prepare(params(), raw2, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sites_filter(tmp_path):
    raw = ixi_folder(tmp_path / "raw", n=3, site="Guys")
    ixi_folder(raw, n=1, site="HH")  # IXI002 again, other site -> error naming the file
    with pytest.raises(InputFileError, match="site"):
        prepare(params(), raw, tmp_path / "out")
    raw = tmp_path / "raw3"
    for s, site in enumerate(["Guys", "Guys", "HH", "HH", "HH"]):
        for j, mod in enumerate(("T1", "T2", "PD")):
            save(raw / f"IXI{s + 2:03d}-{site}-{s:04d}-{mod}.nii.gz", image(mod, SHAPE, grid(), 10 * s + j), grid())
    prepare(
        params(**{"data.sites": ["hh"], "prepare.slices": {"train": 2, "val": 1, "test": 1}}), raw, tmp_path / "out"
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["excluded_by_site"] == ["IXI002", "IXI003"]
    assert {e["site"] for e in manifest["subjects"].values()} == {"HH"}


def test_cli_exit_status_and_message(tmp_path):
    raw = ixi_folder(tmp_path / "raw", n=3)
    _truncated(raw)
    out = tmp_path / "slices"
    res = run_lmid(
        "prepare",
        "--params",
        TINY,
        "--set",
        "data.source=ixi",
        "--set",
        "data.registration=false",
        "--set",
        "prepare.brain_mask=head",
        "--raw",
        raw,
        "--out",
        out,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "IXI004-Guys-0802-T1.nii.gz" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------ determinism
def test_same_seed_same_bytes(tmp_path):
    raw = ixi_folder(tmp_path / "raw", n=5)
    for name in ("a", "b"):
        prepare(params(), raw, tmp_path / name)
    for f in ("train.npz", "val.npz", "test.npz", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    a, b = splits(tmp_path / "a"), splits(tmp_path / "b")
    for s in a:
        np.testing.assert_array_equal(a[s].source, b[s].source)
        np.testing.assert_array_equal(a[s].subject, b[s].subject)
    prepare(params(seed=99), raw, tmp_path / "c")
    c = splits(tmp_path / "c")
    assert any(
        not np.array_equal(a[s].slice_index, c[s].slice_index) or not np.array_equal(a[s].subject, c[s].subject)
        for s in a
    )


# ---------------------------------------------------------------------------------- helpers
def test_split_subjects_properties():
    subjects = [f"S{i:02d}" for i in range(11)]
    for n in (3, 4, 5, 11):
        out = split_subjects(subjects[:n], {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
        assert sorted(sum(out.values(), [])) == subjects[:n]
        assert all(len(v) >= 1 for v in out.values())
    assert [len(v) for v in split_subjects(subjects, {"train": 0.6, "val": 0.2, "test": 0.2}, 3).values()] == [7, 2, 2]
    out = split_subjects(subjects[:2], {"train": 0.8, "val": 0.0, "test": 0.2}, seed=3)
    assert len(out["val"]) == 0 and len(out["train"]) == len(out["test"]) == 1
    with pytest.raises(LmidError):
        split_subjects(subjects[:2], {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert split_subjects(subjects, {"train": 0.6, "val": 0.2, "test": 0.2}, 3) != split_subjects(
        subjects, {"train": 0.6, "val": 0.2, "test": 0.2}, 4
    )


def test_deal_slices_even_and_lazy():
    asked = []

    def capacity(s):
        asked.append(s)
        return {"a": 2, "b": 10, "c": 10, "d": 10}[s]

    assert deal_slices(2, ["a", "b", "c", "d"], capacity) == {"a": 1, "b": 1, "c": 0, "d": 0}
    assert asked == ["a", "b"]  # subjects without a slice are never read
    assert deal_slices(11, ["a", "b", "c", "d"], capacity) == {"a": 2, "b": 3, "c": 3, "d": 3}
    assert deal_slices(50, ["a", "b"], capacity) == {"a": 2, "b": 10}


def test_spread_is_stratified():
    rng = np.random.default_rng(0)
    cand = np.arange(10, 40)
    pick = spread(cand, 5, rng)
    assert len(np.unique(pick)) == 5 and np.all(np.diff(pick) > 0)
    assert all(10 + 6 * i <= p < 10 + 6 * (i + 1) for i, p in enumerate(pick))
    np.testing.assert_array_equal(spread(cand[:3], 5, rng), cand[:3])


def test_generate_then_prepare(tmp_path):
    """The simulated data set end to end."""
    from lmid.data import phantom

    p = load_params(
        TINY,
        {
            "simulate": {"n_subjects": 3, "voxel_mm": 4.0, "axial_planes": 8},
            "prepare": {"slices": {"train": 4, "val": 2, "test": 2}},
        },
    )
    phantom.generate(p, tmp_path / "raw")
    prepare(p, tmp_path / "raw", tmp_path / "slices")
    data = splits(tmp_path / "slices")
    assert [len(data[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    assert all(d.has_label and {1, 2, 3} <= set(np.unique(d.label)) for d in data.values())
    assert all(sorted(data[s].extra) == ["T2"] for s in ("val", "test"))


def test_label_on_another_grid_and_failed_registration(tmp_path):
    raw = ixi_folder(tmp_path / "raw", n=3, labels=True)
    save(raw / "IXI003-Guys-0801-label.nii.gz", np.ones((22, 26, 10), np.uint8), grid((22, 26, 10)))
    with pytest.raises(InputFileError, match="IXI003-Guys-0801-label.nii.gz: shape"):
        prepare(params(**{"data.source": "simulated"}), raw, tmp_path / "out")
    # T1 a metre away from PD in world coordinates: registration cannot start; the error names the file.
    far = grid()
    far[:3, 3] += 1000.0
    raw = ixi_folder(tmp_path / "raw2", n=3)
    save(raw / "IXI002-Guys-0800-T1.nii.gz", image("T1", (20, 26, 14), far, 0), far)
    with pytest.raises(InputFileError, match="IXI002-Guys-0800-T1.nii.gz: registration to IXI002-Guys-0800-PD"):
        prepare(params(**{"data.registration": True}), raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ structure
def test_the_data_package_does_not_import_the_evaluation():
    """Evaluation reads prepared data, never the reverse: no module of lmid/data imports
    lmid.evaluation, in a function or at the top (the bias check is handed to prepare)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "lmid" / "data"
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            found += [f"{path.name}: {n}" for n in names if n.startswith("lmid.evaluation")]
    assert not found and len(list(root.glob("*.py"))) >= 8, found


@pytest.mark.parametrize("n", [1, 2])
def test_workers_return_results_in_order_and_raise_a_job_s_error(n):
    from lmid.parallel import Workers

    ticks = []
    with Workers(n) as pool:
        assert pool.n == n
        assert pool.map(pow, [(2, 10), (3, 3), (5, 0)], lambda: ticks.append(1)) == [1024, 27, 1]
        with pytest.raises(ValueError, match="invalid literal"):
            pool.map(int, [("12",), ("twelve",)])
    assert len(ticks) == 3
    assert Workers(0).n == 1


def test_a_volume_is_loaded_on_its_canonical_grid(tmp_path):
    """Volume.load reorients to RAS+ without resampling: a LPS-stored volume comes back flipped on
    its first two axes, with the affine that maps each voxel to the same world point."""
    from lmid.data.geometry import Volume

    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    lps = np.diag([-2.0, -3.0, 4.0, 1.0])
    save(tmp_path / "v.nii.gz", data, lps)
    v = Volume.load(tmp_path / "v.nii.gz")
    assert v.shape == (4, 5, 3) and v.path == tmp_path / "v.nii.gz" and v.data.dtype == np.float32
    np.testing.assert_array_equal(v.data, data[::-1, ::-1, :])
    assert np.all(np.diag(v.affine)[:3] > 0)
    for ijk in [(0, 0, 0), (3, 4, 2), (1, 2, 1)]:
        flipped = (3 - ijk[0], 4 - ijk[1], ijk[2])
        np.testing.assert_allclose(v.affine @ [*flipped, 1], lps @ [*ijk, 1])
