"""Which subjects ``lmid prepare`` uses: the modalities it needs, the folder's volumes by subject,
and the subjects that have every needed volume (and are of the ``data.sites`` kept)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmid.config import Params
from lmid.data.ixi import LABEL, FolderScan, SubjectFiles
from lmid.errors import InputFileError, LmidError, ParamsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Modalities:
    """The source, target and extra modalities of ``data``."""

    source: str
    target: str
    extras: tuple[str, ...]
    labels: bool  #: tissue maps required (simulated)

    @property
    def images(self) -> tuple[str, ...]:
        return (self.source, self.target, *self.extras)


@dataclass
class Selection:
    """What :func:`select_subjects` found."""

    subjects: dict[str, SubjectFiles]  #: subject id -> its files, every needed volume among them
    skipped: dict[str, str]  #: subject id -> why it was left out ("missing T2")
    excluded: list[str]  #: subjects of the sites that ``data.sites`` leaves out
    use_labels: bool  #: tissue maps for every kept subject (simulated data; IXI when all have them)


def modalities(params: Params) -> Modalities:
    """The modalities ``prepare`` reads (BraTS names checked here), and whether tissue maps are required."""
    d = params.data
    extras = list(d.extra_modalities)  # distinct from each other and from source and target (DataParams)
    if d.source == "brats":
        from lmid.data.brats import MODALITIES

        for key, value in [
            ("data.source_modality", d.source_modality),
            ("data.target_modality", d.target_modality),
            *[("data.extra_modalities", m) for m in extras],
        ]:
            if value.lower() not in MODALITIES:
                raise ParamsError(f"{key}: {value!r} is not a BraTS modality (one of {', '.join(MODALITIES)})")
    return Modalities(d.source_modality, d.target_modality, tuple(extras), labels=d.source == "simulated")


def scan_folder(params: Params, raw_dir: Path) -> FolderScan:
    """The volumes of ``raw_dir`` by subject, in the layout of ``data.source``."""
    if params.data.source == "simulated" and Path(raw_dir).is_dir() and not (Path(raw_dir) / "phantom.json").is_file():
        raise InputFileError(
            Path(raw_dir) / "phantom.json",
            "not found: 'lmid generate' writes it last, so a simulated "
            "folder without it is incomplete (generate it again)",
        )
    if params.data.source == "brats":
        from lmid.data.brats import scan_brats

        return scan_brats(raw_dir)
    from lmid.data.ixi import scan_ixi

    return scan_ixi(raw_dir)


def select_subjects(params: Params, scan: FolderScan, mods: Modalities) -> Selection:
    """Subjects with every needed volume, and the ones left out with the reason."""
    sites = {s.lower() for s in params.data.sites} if params.data.source != "brats" else set()
    needed = list(mods.images) + ([LABEL] if mods.labels else [])
    kept: dict[str, SubjectFiles] = {}
    skipped: dict[str, str] = {}
    excluded: list[str] = []
    for sid, subj in scan.subjects.items():
        if sites and subj.site.lower() not in sites:
            excluded.append(sid)
            continue
        missing = [m for m in needed if subj.find(m) is None]
        if missing:
            skipped[sid] = "missing " + ", ".join(missing)
            log.warning("%s: subject %s skipped: no %s volume", scan.root, sid, "/".join(missing))
            continue
        kept[sid] = subj
    if not kept:
        detail = "; ".join(f"{n} subject(s) {r}" for r, n in Counter(skipped.values()).items()) or "none found"
        site_note = f" ({len(excluded)} excluded by data.sites={params.data.sites})" if excluded else ""
        hint = " (set data.extra_modalities: [] if the extra modalities are not available)" if mods.extras else ""
        raise LmidError(
            f"{scan.root}: no subject has every needed volume ({', '.join(needed)}): {detail}{site_note}{hint}"
        )
    use_labels = mods.labels or (params.data.source == "ixi" and all(s.find(LABEL) for s in kept.values()))
    return Selection(kept, skipped, excluded, use_labels)
