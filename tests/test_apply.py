"""`lmid apply`: one scan in, its translation out, on the scan's own grid.

Synthetic IXI-like volumes (tests/volumes.py) are prepared with the tiny preset at 24 px; tiny
models are trained on them (histogram matching for most cases, a 6-step LMIDiffusion for the
golden scores and the batching check, a 30-step SynthSeg-style segmenter for its labels) and
applied through the CLI to one of the PD volumes.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from volumes import SHAPE, grid, ixi_folder, tissue, world
from volumes import params as volume_params

from lmid.cli import main as lmid_main
from lmid.config import write_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: PSNR (dB) of each axial plane that holds brain (12 of 14) of the tiny LMIDiffusion's
#: translation of the first PD volume, against that subject's T1 normalised as prepare does,
#: inside its tissue map; trained 6 steps, the model draws little more than noise, hence 5-7 dB.
#: Computed once from the seeded model: any change to the preprocessing, the seeds, the sampler
#: or the way the slices go back onto the scan's grid moves them.
GOLDEN_PSNR = [5.567, 7.1129, 7.2689, 6.1865, 6.6859, 6.9519, 6.6847, 6.7069, 6.5554, 7.404, 6.6572, 6.5393]


def _ok(*args):
    rc = lmid_main([str(a) for a in args])
    assert rc == 0, args


@pytest.fixture(scope="module")
def run(one_torch_thread, tmp_path_factory):
    """Prepared slices, trained tiny models (histmatch, identity, LMIDiffusion), the segmenter, a
    published folder holding histmatch, and the scan to translate."""
    root = tmp_path_factory.mktemp("apply")
    raw = ixi_folder(root / "raw")
    params = root / "params.yaml"
    write_params(volume_params(), params)
    slices, models, p = root / "slices", root / "models", ("--params", params)
    _ok("prepare", *p, "--raw", raw, "--out", slices)
    split = ("--train", slices / "train.npz", "--val", slices / "val.npz")
    for method in ("histmatch", "identity", "lmidiffusion"):
        _ok("train", *p, "--method", method, *split, "--out", models / method)
    _ok("fit-segmenter", *p, "--train", slices / "train.npz", "--out", models / "kmeans.json")
    published = root / "published"
    (published / "histmatch").mkdir(parents=True)
    for name in ("model.pt", "train_info.json", "train_log.csv"):
        (published / "histmatch" / name).write_bytes((models / "histmatch" / name).read_bytes())
    (published / "kmeans.json").write_bytes((models / "kmeans.json").read_bytes())
    _ok(
        "publish",
        *p,
        "--set",
        "methods=[histmatch]",
        "--models",
        published,
        "--train",
        slices / "train.npz",
        "--commit",
        "abc123",
        "--out",
        root / "pub",
    )
    scan = sorted(raw.glob("*-PD.nii.gz"))[0]
    return {"root": root, "models": models, "pub": root / "pub", "scan": scan, "params": params, "slices": slices}


def _load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img


def test_translation_is_on_the_input_grid_with_its_segmentation(run, tmp_path):
    """Through a published folder (its params and segmenter by default): the input's shape and
    affine, values in [0, 1], labels 0-3 inside the brain; the model.pt gives the same bytes."""
    out, seg = tmp_path / "t1.nii.gz", tmp_path / "seg.nii.gz"
    _ok("apply", "--input", run["scan"], "--model", run["pub"], "--method", "histmatch", "--out", out, "--segment", seg)
    source, src_img = _load(run["scan"])
    image, img = _load(out)
    labels, seg_img = _load(seg)
    for got in (img, seg_img):
        assert got.shape == src_img.shape
        np.testing.assert_array_equal(got.affine, src_img.affine)
        assert int(got.header["sform_code"]) > 0
    assert image.dtype == np.float32 and np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.5
    assert np.issubdtype(labels.dtype, np.integer) and set(np.unique(labels)) == {0, 1, 2, 3}
    foreground = source > 0.1 * np.percentile(source, 99)
    assert np.mean(foreground[labels > 0]) > 0.95  # labels lie on the brain, not beside it
    # Histogram matching is monotone: inside the brain the translation follows the source.
    assert np.corrcoef(image[foreground], source[foreground])[0, 1] > 0.7

    direct, direct_seg = tmp_path / "direct.nii.gz", tmp_path / "direct-seg.nii.gz"
    m = run["models"]
    _ok(
        "apply",
        *("--params", run["params"], "--input", run["scan"], "--model", m / "histmatch/model.pt"),
        *("--out", direct, "--segment", direct_seg, "--segmenter", m / "kmeans.json"),
    )
    assert direct.read_bytes() == out.read_bytes() and direct_seg.read_bytes() == seg.read_bytes()


def test_another_orientation_of_the_same_scan_gives_the_same_translation(run, tmp_path):
    """The scan stored with its axes permuted and one flipped (same voxels in the world) is
    translated into the same volume, stored the same way: the slices go back where they came from."""
    source, img = _load(run["scan"])
    n0 = source.shape[0]
    stored = np.transpose(source, (1, 2, 0))[:, :, ::-1]  # voxel (a, b, c) is source[n0 - 1 - c, a, b]
    to_source = np.array([[0, 0, -1, n0 - 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(stored, img.affine @ to_source), str(other))
    m, p = run["models"] / "histmatch/model.pt", ("--params", run["params"])
    _ok("apply", *p, "--input", run["scan"], "--model", m, "--out", tmp_path / "a.nii.gz")
    _ok("apply", *p, "--input", other, "--model", m, "--out", tmp_path / "b.nii.gz")
    a, _ = _load(tmp_path / "a.nii.gz")
    b, _ = _load(tmp_path / "b.nii.gz")
    np.testing.assert_allclose(np.transpose(b[:, :, ::-1], (2, 0, 1)), a, atol=1e-6, rtol=0)


def _plane_psnr(translation_path, scan):
    from lmid.data.geometry import normalise
    from lmid.evaluation.metrics import psnr

    t1, _ = _load(str(scan).replace("-PD.", "-T1."))
    brain = tissue(world(SHAPE, grid())).reshape(SHAPE) > 0
    reference, _, _ = normalise(t1.astype(np.float32), brain, (0.5, 99.5), scan)
    image, _ = _load(translation_path)
    planes = np.flatnonzero(brain.any(axis=(0, 1)))
    return [round(psnr(reference[:, :, k], image[:, :, k], brain[:, :, k]), 4) for k in planes]


def test_golden_scores_and_the_same_result_in_batches_of_one(run, tmp_path):
    m, p = run["models"] / "lmidiffusion/model.pt", ("--params", run["params"])
    whole, single = tmp_path / "whole.nii.gz", tmp_path / "single.nii.gz"
    _ok("apply", *p, "--input", run["scan"], "--model", m, "--out", whole, "--batch-size", 64)
    _ok("apply", *p, "--input", run["scan"], "--model", m, "--out", single, "--batch-size", 1)
    np.testing.assert_allclose(_load(single)[0], _load(whole)[0], atol=1e-6, rtol=0)
    scores = _plane_psnr(whole, run["scan"])
    print("per-plane PSNR:", scores)
    np.testing.assert_allclose(scores, GOLDEN_PSNR, atol=2e-3, rtol=0)


# ---------------------------------------------------------------------- segmentation reference
@pytest.fixture(scope="module")
def synthseg_model(run):
    """A tiny SynthSeg-style model on the same slices (30 steps: it segments, poorly)."""
    out = run["models"] / "synthseg"
    sets = {
        "synthseg.channels": "[4, 8, 16]",
        "synthseg.num_res_units": 1,
        "synthseg.train.steps": 30,
        "synthseg.train.batch_size": 4,
        "synthseg.train.checkpoint_every": 30,
    }
    slices = run["slices"]
    _ok(
        "train",
        *("--params", run["params"], *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]),
        *("--method", "synthseg", "--train", slices / "train.npz", "--val", slices / "val.npz", "--out", out),
    )
    return out / "model.pt"


def test_synthseg_writes_its_own_labels_of_the_scan(run, synthseg_model, tmp_path):
    """A segmentation reference gives --segment its own labels of the scan (no segmenter), on the
    input's grid, inside the brain, whatever the batch size."""
    seg, single = tmp_path / "seg.nii.gz", tmp_path / "single.nii.gz"
    args = ("apply", "--params", run["params"], "--input", run["scan"], "--model", synthseg_model)
    _ok(*args, "--segment", seg)
    _ok(*args, "--segment", single, "--batch-size", 1)
    assert seg.read_bytes() == single.read_bytes()
    source, src_img = _load(run["scan"])
    labels, img = _load(seg)
    assert img.shape == src_img.shape
    np.testing.assert_array_equal(img.affine, src_img.affine)
    assert np.issubdtype(labels.dtype, np.integer) and set(np.unique(labels)) <= {0, 1, 2, 3}
    assert len(set(np.unique(labels)) - {0}) >= 2
    foreground = source > 0.1 * np.percentile(source, 99)
    assert np.mean(foreground[labels > 0]) > 0.95  # inside the brain mask, as K-Means labels are


@pytest.mark.parametrize(
    "given, words",
    [
        ("out", ["--out", "translates nothing", "--segment only"]),
        ("nothing", ["give --segment"]),
        ("segmenter", ["--segmenter", "reads no segmenter"]),
    ],
)
def test_synthseg_refuses_a_translation_output(run, synthseg_model, tmp_path, capsys, given, words):
    out = tmp_path / "out"
    extra = {
        "out": ["--out", str(out / "t1.nii.gz"), "--segment", str(out / "seg.nii.gz")],
        "nothing": [],
        "segmenter": ["--segment", str(out / "seg.nii.gz"), "--segmenter", str(run["models"] / "kmeans.json")],
    }[given]
    capsys.readouterr()
    rc = lmid_main(
        ["apply", "--params", str(run["params"]), "--input", str(run["scan"]), "--model", str(synthseg_model), *extra]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1, err
    assert all(w in err[0] for w in words), (words, err)
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------------- refusals
def _volume_with(path, scan, **header_fields):
    """The scan with header fields replaced (the voxels kept)."""
    data, img = _load(scan)
    header = img.header.copy()
    for key, value in header_fields.items():
        header[key] = value
    nib.save(nib.Nifti1Image(data, None, header=header), str(path))
    return path


def _bad_volume(case, scan, folder):
    data, img = _load(scan)
    path = folder / f"{case}.nii.gz"
    if case == "2d-volume":
        nib.save(nib.Nifti1Image(data[:, :, 5], img.affine), str(path))
    elif case == "4d-volume":
        nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), img.affine), str(path))
    elif case == "zero-affine":
        _volume_with(path, scan, qform_code=0, sform_code=1, srow_x=[0] * 4, srow_y=[0] * 4, srow_z=[0] * 4)
    elif case == "nan-affine":
        _volume_with(path, scan, qform_code=0, sform_code=1, srow_x=[np.nan, 0, 0, 0])
    elif case == "no-orientation":
        _volume_with(path, scan, qform_code=0, sform_code=0)
    return path


#: case -> (what is given wrong, words the error must hold)
REFUSALS = {
    "2d-volume": ("input", ["3-D", "2-D"]),
    "4d-volume": ("input", ["3-D", "4-D"]),
    "zero-affine": ("input", ["orientation", "singular"]),
    "nan-affine": ("input", ["orientation", "NaN"]),
    "no-orientation": ("input", ["orientation", "qform_code and sform_code"]),
    "segmenter-as-model": ("model", ["K-Means segmenter", "not a translation model"]),
    "identity-model": ("model", ["identity", "not a translation model"]),
    "volume-as-model": ("model", ["not a model.pt", "NIfTI"]),
    "split-as-model": ("model", ["not a valid lmid checkpoint"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_with_one_line_and_no_output(run, tmp_path, capsys, case):
    what, words = REFUSALS[case]
    scan, model = run["scan"], run["models"] / "histmatch/model.pt"
    if what == "input":
        scan = _bad_volume(case, scan, tmp_path)
    else:
        model = {
            "segmenter-as-model": run["models"] / "kmeans.json",
            "identity-model": run["models"] / "identity/model.pt",
            "volume-as-model": run["scan"],
            "split-as-model": run["slices"] / "train.npz",
        }[case]
    out = tmp_path / "out"
    capsys.readouterr()
    rc = lmid_main(
        [
            *("apply", "--params", str(run["params"]), "--input", str(scan), "--model", str(model)),
            *("--out", str(out / "t1.nii.gz"), "--segment", str(out / "seg.nii.gz")),
            *("--segmenter", str(run["models"] / "kmeans.json")),
        ]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("lmid apply: error: ") and (scan if what == "input" else model).name in err[0], err
    assert all(w in err[0] for w in words), (words, err)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
