"""Find the volumes of an IXI-layout folder and group them by subject.

IXI is distributed as one archive per modality whose files are named
``IXI<subject:3 digits>-<site>-<scan:4 digits>-<modality>.nii.gz``, e.g. ``IXI002-Guys-0828-T1.nii.gz``
(``T1``, ``T2``, ``PD``, ``MRA``; DTI volumes carry a direction number, ``...-DTI-00.nii.gz``). The
simulated data set (:mod:`lmid.data.phantom`) uses the same layout and adds tissue maps,
``...-label.nii.gz`` (0 background, 1 CSF, 2 GM, 3 WM).

The folder is searched recursively (the archives may be unpacked side by side or into one folder
per modality). Only NIfTI files are considered; other files (``phantom.json``, READMEs, hidden
temporary files) are ignored. NIfTI files whose names do not follow the layout are reported: a
warning each if some names parse, an error naming the folder and the files if none does.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from lmid.errors import InputFileError, LmidError

log = logging.getLogger(__name__)

IXI_NAME = re.compile(r"^IXI(\d{3})-([A-Za-z]+)-(\d{4})-([A-Za-z0-9]+)(?:-(\d+))?\.nii(?:\.gz)?$")
LABEL = "label"


@dataclass
class SubjectFiles:
    """The volumes found for one subject, keyed by modality name as spelt in the files."""

    subject: str
    site: str
    files: dict[str, Path] = field(default_factory=dict)

    def find(self, modality: str) -> str | None:
        """The key of ``modality`` in :attr:`files`, matched without regard to case."""
        for key in self.files:
            if key.lower() == modality.lower():
                return key
        return None


@dataclass
class FolderScan:
    root: Path
    subjects: dict[str, SubjectFiles]
    #: NIfTI files whose names do not follow the layout (a warning was logged for each).
    unparsed: list[str] = field(default_factory=list)


def nifti_files(root: Path) -> list[Path]:
    """Every ``.nii``/``.nii.gz`` file below ``root`` (sorted; hidden files skipped)."""
    root = Path(root)
    if not root.exists():
        raise LmidError(f"{root}: folder not found (set data.root or pass --raw)")
    if not root.is_dir():
        raise LmidError(f"{root}: not a folder")
    found = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.name.endswith((".nii", ".nii.gz"))
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not found:
        raise LmidError(f"{root}: folder holds no NIfTI volumes (.nii or .nii.gz)")
    return sorted(found)


def report_unparsed(root: Path, unparsed: list[Path], layout: str, parsed_any: bool) -> list[str]:
    names = [str(p.relative_to(root)) for p in unparsed]
    if unparsed and not parsed_any:
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise LmidError(f"{root}: no file name follows the {layout} layout; found {shown}")
    for name in names:
        log.warning("%s: %s does not follow the %s layout; ignored", root, name, layout)
    return names


def scan_ixi(root: str | Path) -> FolderScan:
    """Group the IXI-layout volumes below ``root`` by subject (``IXI002``, ...)."""
    root = Path(root)
    subjects: dict[str, SubjectFiles] = {}
    unparsed: list[Path] = []
    for path in nifti_files(root):
        m = IXI_NAME.match(path.name)
        if not m:
            unparsed.append(path)
            continue
        number, site, _scan, modality, index = m.groups()
        sid = f"IXI{number}"
        if modality.lower() == LABEL:
            modality = LABEL
        elif index is not None:
            modality = f"{modality}-{index}"  # DTI directions: never a source or target
        subj = subjects.setdefault(sid, SubjectFiles(subject=sid, site=site))
        if subj.site != site:
            other = next(iter(subj.files.values()))
            raise InputFileError(path, f"subject {sid} is from site {site!r} but {other.name} says {subj.site!r}")
        if modality in subj.files:
            first = subj.files[modality].relative_to(root)
            raise InputFileError(path, f"second {modality} volume of {sid} (also {first})")
        subj.files[modality] = path
    names = report_unparsed(root, unparsed, "IXI (IXI###-<site>-####-<modality>.nii.gz)", bool(subjects))
    return FolderScan(root=root, subjects=dict(sorted(subjects.items())), unparsed=names)
