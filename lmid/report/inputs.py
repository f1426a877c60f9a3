"""Reading everything ``lmid report`` shows; optional inputs that are missing come back as None."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmid.errors import InputFileError, LmidError
from lmid.io import load_npz, read_json

log = logging.getLogger(__name__)


@dataclass
class ReportInputs:
    summary: dict
    splits: dict  # "train" / "val" / "test" → SliceSet or None
    translations: dict  # experiment → method → arrays of translations.npz
    diagnostics: dict | None
    unseen_test: object  # SliceSet of the unseen protocol, or None
    baselines: dict | None
    baseline_images: dict | None
    manifest: dict

    @property
    def test(self):
        return self.splits["test"]


def load_translations(translations_dir: Path, experiments: list[str], methods_by_exp: dict) -> dict:
    out: dict = {}
    for exp in experiments:
        out[exp] = {}
        for m in methods_by_exp.get(exp, []):
            path = translations_dir / exp / m / "translations.npz"
            if path.is_file():
                out[exp][m] = load_npz(path, ("image", "index"))
            else:
                log.warning("%s: not found; %s left out of the %s figures", path, m, exp)
    return out


def load_split(path: Path):
    from lmid.data.slices import load_slices

    if not path.is_file():
        return None
    return load_slices(path, allow_empty=True)


def read_manifest(slices_dir: Path) -> dict:
    try:
        value = read_json(Path(slices_dir) / "manifest.json")
    except (LmidError, OSError):
        return {}
    return value if isinstance(value, dict) else {}


def read_summary(reports_dir: Path) -> dict:
    """``summary.json`` of ``lmid aggregate``: the one input the report cannot do without."""
    path = reports_dir / "summary.json"
    if not path.is_file():
        raise InputFileError(path, "file not found (run 'lmid aggregate' first)")
    summary = read_json(path)
    if not isinstance(summary, dict) or summary.get("main_experiment") not in summary.get("experiments", {}):
        raise InputFileError(path, "not a summary written by 'lmid aggregate'")
    return summary


def _optional_json(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def load_inputs(
    reports_dir: Path,
    translations_dir: Path,
    slices_dir: Path,
    unseen_slices_dir=None,
    baseline_images_path=None,
    is_unseen=lambda experiment: False,
) -> ReportInputs:
    """Everything the report reads. Each experiment's translations are checked against the test
    split they were made from: ``unseen_slices_dir``'s where ``is_unseen(experiment)``, else ``slices_dir``'s."""
    from lmid.data.slices import check_translated_from

    summary = read_summary(reports_dir)
    splits = {name: load_split(slices_dir / f"{name}.npz") for name in ("train", "val", "test")}
    test = splits["test"]
    unseen_path = Path(unseen_slices_dir) / "test.npz" if unseen_slices_dir else None
    unseen_test = load_split(unseen_path) if unseen_path else None
    translations = load_translations(
        translations_dir,
        list(summary["experiments"]),
        {e: s["method_order"] for e, s in summary["experiments"].items()},
    )
    for exp, trs in translations.items():
        own, own_path = (unseen_test, unseen_path) if is_unseen(exp) else (test, slices_dir / "test.npz")
        if own is None:  # the figures of this experiment are not drawn
            continue
        for m, tr in trs.items():
            path = translations_dir / exp / m / "translations.npz"
            if tr["image"].shape[1:] != own.shape or np.max(tr["index"], initial=-1) >= len(own):
                raise InputFileError(path, f"does not match the test split {own_path}")
            check_translated_from(path, tr, own, own_path)
    baselines = _optional_json(reports_dir / "baselines.json")
    return ReportInputs(
        summary=summary,
        splits=splits,
        translations=translations,
        diagnostics=_optional_json(reports_dir / "diagnostics.json"),
        unseen_test=unseen_test,
        baselines=baselines,
        baseline_images=load_npz(baseline_images_path) if baselines and baseline_images_path else None,
        manifest=read_manifest(slices_dir),
    )
