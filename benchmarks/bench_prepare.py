"""``lmid prepare`` on IXI-like heads: time per subject and the speed-up of parallel subjects.

Builds an IXI-like folder from simulated heads (``simulate.head``): PD and T2 on the simulated
grid, T1 resampled onto its own sagittal grid of 0.94 x 0.94 x 1.2 mm voxels after a small head
movement (3° about the superior axis, 2 mm), as an IXI session records them. No tissue maps go in,
so ``prepare`` does what it does on IXI: it registers T1 to the PD grid and strips the skull with
BET on the registered T1. It then runs ``prepare`` with 1 and with N worker processes, checks
that both write the same bytes, and reports wall time, the time per subject of each step (from
the log) and the mask's Dice against the true brain mask. With few subjects the speed-up is
well under N: each worker process starts a fresh interpreter and compiles BET's numba code.

    python benchmarks/bench_prepare.py --subjects 4 --workers 2

Writes ``reports/benchmarks/prepare-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _ixi_like(raw: Path, out: Path) -> list[str]:
    """Copy PD/T2, move T1 onto a sagittal grid of its own; returns the subject ids."""
    import nibabel as nib
    import SimpleITK as sitk

    from lmid.data.registration import from_sitk, to_sitk

    out.mkdir(parents=True)
    ids = sorted({p.name.rsplit("-", 1)[0] for p in raw.glob("IXI*-PD.nii.gz")})
    for sid in ids:
        for mod in ("PD", "T2"):
            shutil.copy(raw / f"{sid}-{mod}.nii.gz", out / f"{sid}-{mod}.nii.gz")
        t1 = nib.load(raw / f"{sid}-T1.nii.gz")
        data = np.asarray(t1.dataobj, dtype=np.float32)
        # Sagittal grid (A, S, L axes like IXI's T1), covering the same field of view.
        extent = np.abs(t1.affine[:3, :3]).sum(axis=0) * np.array(data.shape)
        spacing = np.array([0.94, 0.94, 1.2])  # along A, S, L
        shape = np.ceil(extent[[1, 2, 0]] / spacing).astype(int)
        aff = np.zeros((4, 4))
        aff[:3, 0], aff[:3, 1], aff[:3, 2], aff[3, 3] = (0, spacing[0], 0), (0, 0, spacing[1]), (-spacing[2], 0, 0), 1
        centre = t1.affine[:3, :3] @ ((np.array(data.shape) - 1) / 2) + t1.affine[:3, 3]
        aff[:3, 3] = centre - aff[:3, :3] @ ((shape - 1) / 2)
        moving = sitk.Euler3DTransform()
        moving.SetCenter([float(-centre[0]), float(-centre[1]), float(centre[2])])  # LPS
        moving.SetRotation(0.0, 0.0, float(np.deg2rad(3.0)))
        moving.SetTranslation((2.0, 0.0, 0.0))
        ref = to_sitk(np.zeros(shape, np.float32), aff)
        moved = sitk.Resample(to_sitk(data, t1.affine), ref, moving, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        nib.save(nib.Nifti1Image(np.rint(from_sitk(moved)).astype(np.int16), aff), str(out / f"{sid}-T1.nii.gz"))
    return ids


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = ap.parse_args()

    from lmid.config import load_params
    from lmid.data.phantom import generate
    from lmid.data.geometry import load_canonical
    from lmid.data.prepare import prepare

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sim = load_params(args.params, {"simulate": {"head": True, "n_subjects": args.subjects}})
    ixi = load_params(
        args.params,
        {
            "simulate": {"head": True, "n_subjects": args.subjects},
            "data": {"source": "ixi", "registration": True},
            "prepare": {"slices": {"train": 2 * args.subjects, "val": 4, "test": 4}},
        },
    )
    result: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "subjects": args.subjects,
        "voxel_mm": sim.simulate.voxel_mm,
        "strip_threshold": ixi.prepare.strip_threshold,
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(sim, tmp / "sim")
        ids = _ixi_like(tmp / "sim", tmp / "ixi")
        for workers in sorted({1, args.workers}):
            handler = _Lines()
            logging.getLogger("lmid.data.prepare").addHandler(handler)
            t0 = time.perf_counter()
            prepare(ixi, tmp / "ixi", tmp / f"slices-{workers}", workers=workers)
            wall = time.perf_counter() - t0
            logging.getLogger("lmid.data.prepare").removeHandler(handler)
            # Worker processes log to their own stderr; the parent's summary line has the mean.
            mask_s = [
                float(m.group(1))
                for line in handler.lines
                if (m := re.search(r"brain mask \(strip\) ([\d.]+) s per subject", line))
            ]
            result["runs"][str(workers)] = {
                "wall_s": round(wall, 1),
                "mask_and_registration_s_per_subject": mask_s[0] if mask_s else None,
            }
        same = all(
            (tmp / "slices-1" / f).read_bytes() == (tmp / f"slices-{args.workers}" / f).read_bytes()
            for f in ("train.npz", "val.npz", "test.npz", "manifest.json")
        )
        manifest = json.loads((tmp / "slices-1" / "manifest.json").read_text())
        dice, reg_mi = {}, {}
        for stem in ids:  # file stem IXI002-Guys-0828; the manifest keys subjects by IXI002
            sid = stem.split("-")[0]
            entry = manifest["subjects"].get(sid)
            if entry is None:  # a subject that got no slice was never read
                continue
            truth = load_canonical(tmp / "sim" / f"{stem}-label.nii.gz")[0] > 0
            # The mask itself is not saved; rebuild it as prepare did (deterministic).
            from lmid.data.brainmask import strip_skull
            from lmid.data.registration import apply_registration

            pd, pd_aff = load_canonical(tmp / "ixi" / f"{stem}-PD.nii.gz")
            t1, t1_aff = load_canonical(tmp / "ixi" / f"{stem}-T1.nii.gz")
            on_grid = apply_registration(t1, t1_aff, pd.shape, pd_aff, entry["registration"]["T1"])
            mask = strip_skull(on_grid, pd_aff, ixi.prepare.strip_threshold)[0]
            dice[sid] = round(float(2 * (mask & truth).sum() / (mask.sum() + truth.sum())), 4)
            reg_mi[sid] = round(entry["registration"]["T1"]["affine_metric"], 4)
    one, many = result["runs"]["1"]["wall_s"], result["runs"][str(args.workers)]["wall_s"]
    result.update(identical_outputs=same, speedup=round(one / many, 2), mask_dice=dice, registration_mattes_mi=reg_mi)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prepare-cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# `lmid prepare` on IXI-like simulated heads ({result['date']})",
        "",
        f"{args.subjects} subjects at {result['voxel_mm']} mm; T1 on its own sagittal 0.94 x 0.94 x 1.2 mm grid, "
        f"moved 3° and 2 mm; BET f = {result['strip_threshold']} on the registered T1. {result['machine']}.",
        "",
        "| workers | wall (s) | mask + registration per subject (s) |",
        "|---|---|---|",
    ]
    for w, r in result["runs"].items():
        md.append(f"| {w} | {r['wall_s']} | {r['mask_and_registration_s_per_subject']} |")
    md += [
        "",
        f"Speed-up with {args.workers} workers: {result['speedup']}x; outputs identical: {same}.",
        "",
        "| subject | mask Dice vs true brain | final Mattes MI (T1 → PD) |",
        "|---|---|---|",
    ]
    md += [f"| {sid} | {dice[sid]} | {reg_mi[sid]} |" for sid in dice]
    (args.out / "prepare-cpu.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
