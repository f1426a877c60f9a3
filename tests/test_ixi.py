"""Folder scanners: IXI layout (and the simulated data set's labels) and BraTS naming."""

from __future__ import annotations

import logging

import pytest

from lmid.data.brats import scan_brats
from lmid.data.ixi import IXI_NAME, scan_ixi
from lmid.errors import InputFileError, LmidError


def _touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # scanning looks at names only
    return root


@pytest.mark.parametrize(
    "name,expected",
    [
        ("IXI002-Guys-0828-T1.nii.gz", ("002", "Guys", "0828", "T1", None)),
        ("IXI012-HH-1211-PD.nii", ("012", "HH", "1211", "PD", None)),
        ("IXI100-IOP-0868-MRA.nii.gz", ("100", "IOP", "0868", "MRA", None)),
        ("IXI002-Guys-0828-DTI-05.nii.gz", ("002", "Guys", "0828", "DTI", "05")),
        ("IXI003-Guys-0001-label.nii.gz", ("003", "Guys", "0001", "label", None)),
    ],
)
def test_ixi_names_parse(name, expected):
    assert IXI_NAME.match(name).groups() == expected


@pytest.mark.parametrize(
    "name", ["IXI02-Guys-0828-T1.nii.gz", "IXI002_Guys_0828_T1.nii.gz", "IXI002-Guys-0828-T1.mgz", "sub-01_T1w.nii.gz"]
)
def test_ixi_names_rejected(name):
    assert IXI_NAME.match(name) is None


def test_scan_groups_by_subject(tmp_path, caplog):
    _touch(
        tmp_path,
        "IXI002-Guys-0828-T1.nii.gz",
        "IXI002-Guys-0828-PD.nii.gz",
        "IXI002-Guys-0828-T2.nii.gz",
        "IXI002-Guys-0828-DTI-00.nii.gz",
        "PD/IXI013-HH-1212-PD.nii.gz",
        "T1/IXI013-HH-1212-T1.nii.gz",
        "IXI020-IOP-0001-label.nii.gz",
        "phantom.json",
        ".IXI002-Guys-0828-T1.nii.gz.tmp.nii.gz",
        "notes-T1.nii.gz",
    )
    with caplog.at_level(logging.WARNING):
        scan = scan_ixi(tmp_path)
    assert list(scan.subjects) == ["IXI002", "IXI013", "IXI020"]
    s = scan.subjects["IXI002"]
    assert s.site == "Guys" and set(s.files) == {"T1", "PD", "T2", "DTI-00"}
    assert s.find("pd") == "PD" and s.find("FLAIR") is None
    assert scan.subjects["IXI013"].site == "HH" and set(scan.subjects["IXI013"].files) == {"PD", "T1"}
    assert set(scan.subjects["IXI020"].files) == {"label"}
    assert scan.unparsed == ["notes-T1.nii.gz"]
    assert "notes-T1.nii.gz" in caplog.text and "IXI" in caplog.text


def test_scan_nothing_parses_names_folder_and_file(tmp_path):
    _touch(tmp_path, "subject_002-T1.nii.gz", "subject_002-PD.nii.gz")
    with pytest.raises(LmidError) as info:
        scan_ixi(tmp_path)
    assert str(tmp_path) in str(info.value) and "subject_002-PD.nii.gz" in str(info.value)


def test_scan_empty_or_missing_folder(tmp_path):
    with pytest.raises(LmidError, match="no NIfTI"):
        scan_ixi(_touch(tmp_path, "README.txt"))
    with pytest.raises(LmidError, match="not found"):
        scan_ixi(tmp_path / "nope")


def test_scan_duplicate_volume(tmp_path):
    _touch(tmp_path, "IXI002-Guys-0828-T1.nii.gz", "copy/IXI002-Guys-0828-T1.nii")
    with pytest.raises(InputFileError, match="second T1"):
        scan_ixi(tmp_path)


def test_brats_both_namings(tmp_path):
    _touch(
        tmp_path,
        *[f"BraTS-GLI-00000-000/BraTS-GLI-00000-000-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f", "seg")],
        *[f"BraTS2021_00012/BraTS2021_00012_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")],
        "BraTS2021_00012/notes.nii.gz",
    )
    scan = scan_brats(tmp_path)
    assert list(scan.subjects) == ["BraTS-GLI-00000-000", "BraTS2021_00012"]
    new, old = scan.subjects["BraTS-GLI-00000-000"], scan.subjects["BraTS2021_00012"]
    assert set(new.files) == {"t1", "t1ce", "t2", "flair", "seg"} and new.site == "GLI"
    assert new.files["t1ce"].name.endswith("-t1c.nii.gz") and new.files["flair"].name.endswith("-t2f.nii.gz")
    assert set(old.files) == {"t1", "t1ce", "t2", "flair"} and old.site == "BraTS2021"
    assert old.files["t1"].name == "BraTS2021_00012_t1.nii.gz"
    assert scan.unparsed == ["BraTS2021_00012/notes.nii.gz"]
