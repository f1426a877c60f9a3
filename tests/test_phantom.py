"""The simulated brains: physics, co-registration, IXI layout, determinism (tiny grids: seconds)."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lmid.config import Params
from lmid.data import phantom
from lmid.errors import ParamsError
from lmid.io import read_json

from conftest import TINY, run_lmid

MODS = ("T1", "PD", "T2")


def tiny(seed: int = 11, **simulate) -> Params:
    sim = {"n_subjects": 3, "voxel_mm": 4.0, "axial_planes": 8, **simulate}
    return Params.model_validate({"seed": seed, "simulate": sim})


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def subject_files(out: Path) -> dict[str, dict[str, Path]]:
    by_id: dict[str, dict[str, Path]] = {}
    for f in sorted(out.glob("*.nii.gz")):
        m = phantom.IXI_NAME.match(f.name)
        assert m, f"{f.name} is not an IXI name"
        by_id.setdefault(f.name.rsplit("-", 1)[0], {})[m["kind"]] = f
    return by_id


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "raw"
    summary = phantom.generate(tiny(), out)
    assert summary["n_subjects"] == 3
    return out


# ---------------------------------------------------------------------------------------- physics
def test_signal_equations_match_hand_computed_values():
    # GM, PD-weighted spin echo (TR 8178, TE 8): 0.8·(1 − e^(−8178/1100))·e^(−8/95)
    assert phantom.spin_echo(0.8, 1100.0, 95.0, 8178.0, 8.0) == pytest.approx(0.734956, abs=1e-6)
    # WM, spoiled gradient echo (TR 20, TE 4.6, 30°): E1 = e^(−20/700) = 0.971833,
    # 0.7·sin30°·(1 − E1)/(1 − cos30°·E1)·e^(−4.6/66)
    seq = {"kind": "spoiled_gradient_echo", "tr_ms": 20.0, "te_ms": 4.6, "flip_deg": 30.0}
    wm = {"pd": 0.7, "t1_ms": 700.0, "t2_ms": 75.0, "t2s_ms": 66.0}
    assert phantom.tissue_signal(seq, wm) == pytest.approx(0.0580596, abs=1e-6)
    # Limits: TE = 0 and TR ≫ T1 give PD; the GRE signal peaks at the Ernst angle arccos(E1).
    assert phantom.spin_echo(0.7, 700.0, 75.0, 1e7, 0.0) == pytest.approx(0.7)
    ernst = math.degrees(math.acos(math.exp(-20.0 / 700.0)))
    flips = np.linspace(1, 90, 891)
    best = flips[np.argmax(phantom.spoiled_gradient_echo(0.7, 700.0, 66.0, 20.0, 4.6, flips))]
    assert best == pytest.approx(ernst, abs=0.1)


def test_default_tissues_give_the_textbook_contrast_order():
    sim = Params().simulate
    tissues = {k: t.model_dump() for k, t in sim.tissues.items()}
    s = {m: {k: phantom.tissue_signal(sim.sequences[m].model_dump(), tissues[k]) for k in tissues} for m in MODS}
    assert s["T1"]["wm"] > s["T1"]["gm"] > s["T1"]["csf"]
    assert s["PD"]["csf"] > s["PD"]["gm"] > s["PD"]["wm"]
    assert s["T2"]["csf"] > s["T2"]["gm"] > s["T2"]["wm"]


def test_mean_tissue_intensities_follow_the_physics(generated):
    for sid, files in subject_files(generated).items():
        label, _ = read(files["label"])
        assert set(np.unique(label)) == {0, 1, 2, 3}, sid
        mean = {}
        for mod in MODS:
            img, _ = read(files[mod])
            assert img.dtype == np.int16
            mean[mod] = {k: img[label == v].mean() for k, v in (("csf", 1), ("gm", 2), ("wm", 3))}
            # Scanner-like scaling: the mean brain intensity is about TARGET_MEAN.
            assert img[label > 0].mean() == pytest.approx(phantom.TARGET_MEAN, rel=0.02)
        assert mean["T1"]["wm"] > mean["T1"]["gm"] > mean["T1"]["csf"], (sid, mean["T1"])
        assert mean["PD"]["csf"] > mean["PD"]["gm"] > mean["PD"]["wm"], (sid, mean["PD"])
        assert mean["T2"]["csf"] > mean["T2"]["gm"] > mean["T2"]["wm"], (sid, mean["T2"])


def test_noise_matches_the_requested_snr(generated):
    # Away from the brain the image is pure Rayleigh noise: mean σ·√(π/2), σ = mean brain / snr.
    from scipy import ndimage

    files = next(iter(subject_files(generated).values()))
    label, _ = read(files["label"])
    img, _ = read(files["T2"])
    near = ndimage.binary_dilation(label > 0, iterations=2)
    expected = phantom.TARGET_MEAN / 40.0 * math.sqrt(math.pi / 2)
    assert img[~near].mean() == pytest.approx(expected, rel=0.1)


def test_deformation_has_the_requested_rms():
    mats = [phantom.bspline_matrix(n, 20.0 / 2.0) for n in (40, 48, 44)]
    assert all(np.allclose(m.sum(1), 1.0) for m in mats)  # a local weighted average of knot values
    gain = math.prod(float(np.mean(np.sum(m**2, axis=1))) for m in mats)
    rng = np.random.default_rng(0)
    rms = [
        np.sqrt(np.mean(phantom.bspline_field(rng.standard_normal([m.shape[1] for m in mats]), mats) ** 2))
        for _ in range(20)
    ]
    assert np.mean(rms) / math.sqrt(gain) == pytest.approx(1.0, rel=0.1)


# ----------------------------------------------------------------------------- subjects, geometry
def test_subjects_differ(generated):
    subjects = list(subject_files(generated).values())
    a, b = read(subjects[0]["T1"])[0], read(subjects[1]["T1"])[0]
    la, lb = read(subjects[0]["label"])[0], read(subjects[1]["label"])[0]
    assert a.shape == b.shape
    assert not np.array_equal(la, lb)
    assert np.mean(la != lb) > 0.05  # different anatomy, not just different noise


def test_modalities_of_a_subject_are_coregistered(generated):
    for sid, files in subject_files(generated).items():
        label, affine = read(files["label"])
        brain = label > 0
        for mod in MODS:
            img, aff = read(files[mod])
            assert img.shape == label.shape and np.allclose(aff, affine), (sid, mod)
            # The thresholded image is the label's brain (noise floor ≈ 31, brain ≈ 1000).
            mask = img > 0.25 * phantom.TARGET_MEAN if mod != "T1" else img > 0.2 * phantom.TARGET_MEAN
            dice = 2 * np.sum(mask & brain) / (mask.sum() + brain.sum())
            assert dice > 0.93, (sid, mod, dice)
        # Tissue boundaries of the label are intensity edges of T1: the gradient is larger there.
        t1 = read(files["T1"])[0].astype(float)
        grad = np.sqrt(sum(g**2 for g in np.gradient(t1)[:2]))  # in-plane (only a few planes)
        wm = (label == 3).astype(float)
        edge = brain & (np.sqrt(sum(g**2 for g in np.gradient(wm)[:2])) > 0)
        interior = brain & ~edge & (label == 3)
        assert grad[edge].mean() > 1.5 * grad[interior].mean(), sid


def test_axial_planes_are_the_middle_planes_of_the_whole_volume():
    whole = phantom.simulate_subject(tiny(axial_planes=0), 1)
    part = phantom.simulate_subject(tiny(axial_planes=6), 1)
    nz = whole["label"].shape[2]
    k0 = (nz - 6) // 2
    assert part["label"].shape == whole["label"].shape[:2] + (6,)
    # Same anatomy at the same world positions: the affine moved by k0 planes.
    shift = np.eye(4)
    shift[2, 3] = k0
    assert np.allclose(part["affine"], whole["affine"] @ shift)
    assert np.array_equal(part["label"], whole["label"][:, :, k0 : k0 + 6])
    # Whole grid: the warped brain stays inside it, and axes are RAS+ with axis 2 superior.
    brain = whole["label"] > 0
    assert not (
        brain[0].any()
        or brain[-1].any()
        or brain[:, 0].any()
        or brain[:, -1].any()
        or brain[:, :, 0].any()
        or brain[:, :, -1].any()
    )
    assert nib.aff2axcodes(whole["affine"]) == ("R", "A", "S")


def test_a_subject_does_not_depend_on_how_many_are_simulated():
    a = phantom.simulate_subject(tiny(n_subjects=3), 2)
    b = phantom.simulate_subject(tiny(n_subjects=5), 2)
    assert a["id"] == b["id"]
    assert all(np.array_equal(a["images"][m], b["images"][m]) for m in MODS)


# ----------------------------------------------------------------------------------- the layout
def test_files_are_in_the_ixi_layout(generated):
    by_id = subject_files(generated)
    assert len(by_id) == 3
    for i, (sid, files) in enumerate(sorted(by_id.items())):
        assert set(files) == {"T1", "T2", "PD", "label"}  # one label per subject
        assert sid.startswith(f"IXI{i + 2:03d}-{('Guys', 'HH', 'IOP')[i]}-")
    record = read_json(generated / "phantom.json")
    assert [s["id"] for s in record["subjects"]] == sorted(by_id)
    assert record["grid"]["shape"][2] == 8
    label, affine = read(by_id[sorted(by_id)[0]]["label"])
    assert label.dtype == np.uint8 and np.allclose(affine, record["grid"]["affine"])


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(generated, tmp_path):
    again = tmp_path / "again"
    phantom.generate(tiny(), again)
    names = sorted(p.name for p in generated.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (generated / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    phantom.generate(tiny(seed=12), other)
    first = lambda d: sorted(d.glob("IXI002-*-T1.nii.gz"))[0]  # noqa: E731
    assert not np.array_equal(read(first(generated))[0], read(first(other))[0])


def test_fewer_subjects_remove_the_stale_files(tmp_path):
    phantom.generate(tiny(n_subjects=4, axial_planes=2), tmp_path)
    assert len(subject_files(tmp_path)) == 4
    phantom.generate(tiny(n_subjects=3, axial_planes=2), tmp_path)
    assert len(subject_files(tmp_path)) == 3
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_missing_modality_is_a_params_error(tmp_path):
    params = Params.model_validate(
        {
            "simulate": {
                "sequences": {
                    "T1": {"kind": "spoiled_gradient_echo", "tr_ms": 20, "te_ms": 4.6, "flip_deg": 30},
                    "T2": {"kind": "spin_echo", "tr_ms": 8000, "te_ms": 100},
                }
            },
            "unseen_protocol": {"enabled": False},
        }
    )
    with pytest.raises(ParamsError, match=r"simulate\.sequences.*PD"):
        phantom.generate(params, tmp_path)
    # With the unseen protocol on, the loader already refuses it: that protocol replaces PD.
    with pytest.raises(ValueError, match=r"unseen_protocol\.sequences names \['PD'\]"):
        Params.model_validate({"simulate": {"sequences": params.simulate.model_dump(mode="json")["sequences"]}})


def test_cli_generate_matches_an_in_process_run_byte_for_byte(tmp_path):
    from lmid.config import load_params

    sets = {"simulate": {"n_subjects": 3, "axial_planes": 2}}
    res = run_lmid(
        "generate",
        "--params",
        TINY,
        "--set",
        "simulate.n_subjects=3",
        "--set",
        "simulate.axial_planes=2",
        "--out",
        tmp_path / "cli",
    )
    assert res.returncode == 0, res.stderr
    assert len(subject_files(tmp_path / "cli")) == 3
    phantom.generate(load_params(TINY, sets), tmp_path / "here")
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert "phantom.json" in names and names == sorted(p.name for p in (tmp_path / "here").iterdir())
    for name in names:  # another process, same bytes
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "here" / name).read_bytes(), name


# ------------------------------------------------------------------------------ unseen protocol
def test_unseen_protocol_keeps_the_subjects_and_changes_the_contrast(tmp_path):
    """Same anatomy and labels; PD on the 3 T / TR 6 s protocol follows the physics of that protocol."""
    params = tiny(axial_planes=6, snr=1e4)
    unseen = params.unseen_simulation()
    assert unseen.simulate.sequences["T1"] == params.simulate.sequences["T1"]  # T1 not replaced
    assert unseen.simulate.sequences["PD"].tr_ms == 6000.0 and unseen.simulate.snr == 30.0
    a = phantom.simulate_subject(
        params.model_copy(
            update={
                "simulate": params.simulate.model_copy(
                    update={"tissue_jitter": 0.0, "sequence_jitter": 0.0, "bias_strength": 0.0}
                )
            }
        ),
        0,
    )
    b_params = unseen.model_copy(
        update={
            "simulate": unseen.simulate.model_copy(
                update={"tissue_jitter": 0.0, "sequence_jitter": 0.0, "bias_strength": 0.0, "snr": 1e4}
            )
        }
    )
    b = phantom.simulate_subject(b_params, 0)
    assert a["id"] == b["id"]
    np.testing.assert_array_equal(a["label"], b["label"])

    # Pure-tissue voxels: the PD ratio CSF/GM is the spin-echo equation's, per protocol.
    def ratio(subj, p):
        img, lab = subj["images"]["PD"], subj["label"]
        seq = p.simulate.sequences["PD"].model_dump()
        expected = phantom.tissue_signal(seq, p.simulate.tissues["csf"].model_dump()) / phantom.tissue_signal(
            seq, p.simulate.tissues["gm"].model_dump()
        )
        return img[lab == 1].mean() / img[lab == 2].mean(), expected

    got_a, want_a = ratio(a, params)
    got_b, want_b = ratio(b, b_params)
    assert want_a > 1.15 and 0.95 < want_b < 1.1  # CSF clearly brightest on the main protocol only
    assert got_a == pytest.approx(want_a, rel=0.1) and got_b == pytest.approx(want_b, rel=0.1)


def test_cli_generate_unseen_records_its_protocol(tmp_path):
    res = run_lmid(
        "generate",
        "--params",
        TINY,
        "--set",
        "simulate.n_subjects=3",
        "--set",
        "simulate.axial_planes=2",
        "--protocol",
        "unseen",
        "--out",
        tmp_path / "u",
    )
    assert res.returncode == 0, res.stderr
    record = read_json(tmp_path / "u" / "phantom.json")
    assert record["protocol"] == "unseen"
    assert record["simulate"]["sequences"]["PD"]["tr_ms"] == 6000.0 and record["simulate"]["snr"] == 30.0


def test_unseen_protocol_is_refused_for_own_data():
    with pytest.raises(ValueError, match="unseen_protocol.enabled"):
        Params.model_validate({"data": {"source": "ixi", "root": "x"}, "unseen_protocol": {"enabled": True}})
    assert not Params.model_validate({"data": {"source": "ixi", "root": "x"}}).unseen_protocol_active
    with pytest.raises(ValueError, match=r"unseen_protocol.sources \['FLAIR'\] must be among"):
        Params.model_validate({"unseen_protocol": {"sources": ["FLAIR"]}})
    assert Params.model_validate({}).unseen_protocol_active
