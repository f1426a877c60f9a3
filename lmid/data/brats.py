"""Find the volumes of a BraTS-style folder (one folder per case, co-registered modalities).

Two naming schemes are recognised, case-insensitively, and mapped to the modality names used in
``params.yaml`` (``t1``, ``t1ce``, ``t2``, ``flair``):

======================================  ==============================  ==========
BraTS 2023 (``BraTS-GLI-00000-000-*``)   BraTS 2021 (``BraTS2021_00000_*``)  name
======================================  ==============================  ==========
``-t1n``                                 ``_t1``                          ``t1``
``-t1c``                                 ``_t1ce``                        ``t1ce``
``-t2w``                                 ``_t2``                          ``t2``
``-t2f``                                 ``_flair``                       ``flair``
``-seg``                                 ``_seg``                         ``seg``
======================================  ==============================  ==========

The case id is the file-name prefix (``BraTS-GLI-00000-000``); the "site" recorded in the manifest
is the collection (``GLI``, ``MEN``, ... or ``BraTS2021``).

The segmentation holds *tumour* labels (necrosis, oedema, enhancing tumour), not the CSF/GM/WM
tissue classes the pipeline scores, so it is never used as ``label`` (``has_label`` is false for
BraTS); the manifest records which case has one.
"""

from __future__ import annotations

import re
from pathlib import Path

from lmid.data.ixi import FolderScan, SubjectFiles, nifti_files, report_unparsed
from lmid.errors import InputFileError

BRATS_NAME = re.compile(
    r"^(?P<case>.+?)[-_](?P<mod>t1n|t1c|t2w|t2f|t1ce|t1|t2|flair|seg)\.nii(?:\.gz)?$", re.IGNORECASE
)
MODALITY = {
    "t1n": "t1",
    "t1": "t1",
    "t1c": "t1ce",
    "t1ce": "t1ce",
    "t2w": "t2",
    "t2": "t2",
    "t2f": "flair",
    "flair": "flair",
    "seg": "seg",
}
MODALITIES = ("t1", "t1ce", "t2", "flair")
SEGMENTATION = "seg"


def _site(case: str) -> str:
    m = re.match(r"BraTS-([A-Za-z]+)-", case, re.IGNORECASE)
    if m:
        return m.group(1).upper()
    return re.split(r"[-_]\d", case, maxsplit=1)[0] or "BraTS"


def scan_brats(root: str | Path) -> FolderScan:
    """Group the BraTS-style volumes below ``root`` by case."""
    root = Path(root)
    cases: dict[str, SubjectFiles] = {}
    unparsed: list[Path] = []
    for path in nifti_files(root):
        m = BRATS_NAME.match(path.name)
        if not m:
            unparsed.append(path)
            continue
        case, modality = m.group("case"), MODALITY[m.group("mod").lower()]
        subj = cases.setdefault(case, SubjectFiles(subject=case, site=_site(case)))
        if modality in subj.files:
            first = subj.files[modality].relative_to(root)
            raise InputFileError(path, f"second {modality} volume of case {case} (also {first})")
        subj.files[modality] = path
    layout = "BraTS (<case>-t1n/-t1c/-t2w/-t2f/-seg.nii.gz or <case>_t1/_t1ce/_t2/_flair/_seg.nii.gz)"
    names = report_unparsed(root, unparsed, layout, bool(cases))
    return FolderScan(root=root, subjects=dict(sorted(cases.items())), unparsed=names)
