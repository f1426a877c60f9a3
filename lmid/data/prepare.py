"""``lmid prepare``: volumes -> normalised axial slices in subject-level train/val/test splits.

What happens, in order (every choice the paper leaves open is written down here and recorded in
``manifest.json`` next to the slices):

1. **Find the volumes** (:mod:`lmid.data.subjects`; :mod:`lmid.data.ixi` for
   ``simulated``/``ixi``, :mod:`lmid.data.brats`). A subject needs the source, the target and every ``data.extra_modalities`` volume; the
   simulated data set also needs its tissue map (``label``). Subjects missing one are skipped with
   a warning and listed with the reason. IXI subjects also carry tissue maps when *every* kept
   subject has a ``-label`` volume. ``data.sites`` keeps only those sites (IXI layout only).
2. **Split by subject** (:mod:`lmid.data.splits`): a seeded shuffle, then ``prepare.split`` fractions with at least one
   subject in every split whose fraction is positive (no subject is in two splits).
3. **Share out slices**: ``prepare.slices.<split>`` slices are dealt one at a time round the
   split's subjects (in the shuffled order) so counts differ by at most one between subjects,
   skipping subjects whose brain range is used up. Volumes of a subject that gets no slice are not
   read at all (paper-scale IXI has about as many subjects as slices).
4. **Per subject** (:mod:`lmid.data.reader`; geometry in :mod:`lmid.data.geometry`):

   a. load (checked: :func:`lmid.io.load_volume`), reorient to the closest RAS+ orientation
      (``nibabel.as_closest_canonical``) so the 3rd axis is axial;
   b. bring every modality onto the source grid: identical grids (simulated, BraTS, IXI PD/T2)
      are used as they are; a different grid (IXI T1) is registered to the source
      (:mod:`lmid.data.registration`, when ``data.registration``), otherwise different shapes are
      an error naming the files;
   c. **brain mask** (``prepare.brain_mask``, :mod:`lmid.data.brainmask`): the tissue map's
      ``label > 0`` (``labels``); BET's skull stripping of the target modality on the source grid
      (``strip``; IXI and simulated heads are not skull-stripped); or the source's foreground
      (``head``: the brain on skull-stripped BraTS, the whole head on IXI);
   d. optional **N4 bias-field correction** of every volume (``prepare.bias_correction``), fitted
      inside the dilated brain mask;
   e. **normalisation** of every modality: clip to ``prepare.percentiles`` of its values inside
      the mask and map to [0, 1]; ``(lo, hi)`` recorded, so ``raw = lo + x·(hi − lo)`` inside
      the clipping range (of the bias-corrected volume, with N4);
   f. **brain range**: axial planes whose mask area is at least ``prepare.min_brain_fraction``
      of the volume's largest; the subject's slices are spread evenly over it (stratified,
      seeded offset);
   g. **in-plane grid**: one square (in mm, so the aspect ratio is kept) around the mask of the
      brain range, :data:`lmid.data.geometry.MARGIN` wider on each side, zero outside the volume; resized to
      ``prepare.size``² with ``skimage.transform.resize`` (order 1 with anti-aliasing for
      images, order 0 for mask and labels). Slices are shown *anterior up, patient's left on
      the left* (rows run anterior -> posterior, columns along RAS+ x).
   Subjects are read in parallel (``--threads`` worker processes, each on one thread:
   :class:`lmid.parallel.Workers`). The mask
   and any registration of a subject are computed once, when its brain range is first needed,
   and reused for its slices (the registration's transform, not the resampled volume, is kept).
5. **Check the bias correction** where tissue maps exist: the 3-cluster K-Means Dice of the real
   target's test slices against the tissue maps, with and without N4 (``manifest["bias_check"]``,
   shown in the report's Protocol section): :mod:`lmid.evaluation.bias_check`, which
   ``lmid prepare`` hands to :func:`prepare`.
6. **Write** ``train.npz``, ``val.npz``, ``test.npz`` (:class:`lmid.data.slices.SliceSet`) and
   ``manifest.json``, only after everything else has succeeded, each atomically.

Val and test carry ``extra_<MOD>`` for every extra modality; train carries only source, target,
mask and labels (methods see what :meth:`lmid.methods.base.Method.training_data` allows).

For a subject, ``manifest["subjects"][id]["slice_affine"]`` maps ``(row, column, k)`` of the
prepared slice grid (``k`` the axial index of the reoriented source, ``slice_index``) to world mm
(RAS+), so a stack of prepared slices written with it lands on the source volume in any viewer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmid.config import Params
from lmid.data.brainmask import FOREGROUND, N4_DILATION_MM
from lmid.data.geometry import ORIENTATION
from lmid.data.ixi import SubjectFiles
from lmid.data.reader import Geometry, SubjectReader, SubjectSlices, extract_job, geometry_job
from lmid.data.slices import SliceSet
from lmid.data.splits import SPLITS, deal_slices, split_subjects
from lmid.data.subjects import Modalities, modalities, scan_folder, select_subjects
from lmid.errors import LmidError
from lmid.io import replaced_folder, write_json
from lmid.parallel import Workers
from lmid.progress import progress_disabled

log = logging.getLogger(__name__)

#: ``(params, train, test, other_train_target, other_test_target, applied) -> dict | None``: the
#: check of the bias correction that ``prepare`` records (``lmid prepare`` passes
#: :func:`lmid.evaluation.bias_check.bias_check`).
BiasCheck = Callable[[Params, SliceSet, SliceSet, np.ndarray, np.ndarray, str], dict | None]


def prepare(
    params: Params, raw_dir: Path, out_dir: Path, workers: int = 1, bias_check: BiasCheck | None = None
) -> dict:
    """Write ``train.npz``, ``val.npz``, ``test.npz`` and ``manifest.json`` into ``out_dir``.

    Subjects are read by ``workers`` processes. Nothing is written unless every step succeeds.
    ``bias_check`` (``lmid prepare`` passes :func:`lmid.evaluation.bias_check.bias_check`) is run
    where tissue maps exist and recorded as ``manifest["bias_check"]``; without it that is null.
    Returns a summary (counts, skipped, wall time).
    """
    t_start = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    p = params.prepare
    mods = modalities(params)
    scan = scan_folder(params, raw_dir)
    selection = select_subjects(params, scan, mods)
    kept, use_labels = selection.subjects, selection.use_labels
    splits = split_subjects(sorted(kept), p.split.model_dump(), params.seed)
    reader = SubjectReader(params, mods, use_labels, raw_dir, check_bias=bias_check is not None)
    requested = p.slices.model_dump()
    geometry, results = _read_subjects(reader, kept, splits, requested, params.seed, workers)

    sets, counts = {}, {}
    for split in SPLITS:
        ids = [sid for sid in sorted(splits[split]) if sid in results]
        sets[split] = _assemble(split, ids, results, mods, use_labels, p.size)
        counts[split] = {
            "slices": len(sets[split]),
            "requested_slices": requested[split],
            "subjects": len(splits[split]),
            "subjects_with_slices": len(ids),
        }
        if len(sets[split]) < requested[split]:
            log.warning(
                "%s split: %d slices instead of the %d requested (its %d subject(s) have no more planes in "
                "their brain range)",
                split,
                len(sets[split]),
                requested[split],
                len(splits[split]),
            )
    checked = _check_bias(bias_check, params, splits, results, sets, reader.bias) if reader.check_bias else None
    mask_seconds = float(np.mean([g.seconds for g in geometry.values()])) if geometry else 0.0

    manifest = {
        "format": "lmid-slices/1",
        "data_source": params.data.source,
        "raw_dir": str(raw_dir),
        "modalities": {"source": mods.source, "target": mods.target, "extra": list(mods.extras)},
        "has_label": bool(use_labels),
        "labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"} if use_labels else {},
        "label_note": _label_note(params, use_labels),
        "brain_mask": _mask_note(params, reader.mode, mods),
        "bias_correction": f"N4 (SimpleITK) of every volume inside the brain mask dilated {N4_DILATION_MM:g} mm"
        if reader.bias == "n4"
        else "none",
        "bias_check": checked,
        "slice_size": [p.size, p.size],
        "slice_orientation": ORIENTATION,
        "slice_affine_maps": "(row, column, slice_index) -> world mm (RAS+)",
        "normalisation": f"clip to percentiles {list(p.percentiles)} inside the brain mask, map to [0, 1]; "
        "raw = lo + x * (hi - lo)",
        "registration": {
            "enabled": params.data.registration,
            "software": _sitk_version(),
            "method": "rigid (Euler3D) then affine, Mattes mutual information, onto the source grid",
        },
        "counts": counts,
        "splits": {split: sorted(splits[split]) for split in SPLITS},
        "skipped": selection.skipped,
        "n_skipped": len(selection.skipped),
        "excluded_by_site": selection.excluded,
        "unparsed_files": scan.unparsed,
        "subjects": {sid: results[sid].manifest for sid in sorted(results)},
        "params": {
            "seed": params.seed,
            "data": params.data.model_dump(mode="json"),
            "prepare": params.prepare.model_dump(mode="json"),
        },
    }

    # Everything is in memory: only now touch the output folder, which the new splits and their
    # manifest replace together (an interrupted run leaves the old four files as they were).
    overlap = {
        (a, b): sorted(set(splits[a]) & set(splits[b]))
        for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
    }
    if any(overlap.values()):  # split_subjects never does this; a guard for whoever changes it
        raise LmidError(f"subjects in two splits: {overlap}")
    owned = {f"{split}.npz" for split in SPLITS} | {"manifest.json"}
    with replaced_folder(out_dir, lambda name: name in owned) as stage:
        for split in SPLITS:
            sets[split].save(stage / f"{split}.npz")
        write_json(stage / "manifest.json", manifest)
    wall = time.perf_counter() - t_start
    log.info(
        "prepare: %s slices (train/val/test) from %s subjects in %.1f s; %d subject(s) skipped",
        "/".join(str(counts[s]["slices"]) for s in SPLITS),
        "/".join(str(counts[s]["subjects_with_slices"]) for s in SPLITS),
        wall,
        len(selection.skipped),
    )
    log.info("prepare: brain mask (%s) %.1f s per subject, on %d worker(s)", reader.mode, mask_seconds, workers)
    return {
        "counts": counts,
        "skipped": selection.skipped,
        "has_label": bool(use_labels),
        "wall_s": wall,
        "brain_mask_s_per_subject": mask_seconds,
    }


def _read_subjects(
    reader: SubjectReader,
    kept: dict[str, SubjectFiles],
    splits: dict[str, list[str]],
    requested: dict[str, int],
    seed: int,
    workers: int,
) -> tuple[dict[str, Geometry], dict[str, SubjectSlices]]:
    """Deal each split's slices round its subjects, then cut them: the geometry of every subject
    offered a slice, and the slices of every subject that got one (subjects on ``workers`` processes)."""
    from tqdm import tqdm

    geometry: dict[str, Geometry] = {}
    with Workers(workers) as pool:
        # Share out slices; a subject's brain range is read only when it is first offered a slice
        # (with several workers, that subject and the next ones of its split in the dealing order).
        with tqdm(desc="prepare: brain masks", unit="subject", disable=progress_disabled()) as bar:

            def capacity_in(order: list[str]):
                def capacity(sid: str) -> int:
                    if sid not in geometry:
                        batch = [s for s in order[order.index(sid) :] if s not in geometry][: pool.n]
                        for s, g in zip(batch, pool.map(geometry_job, [(reader, kept[s]) for s in batch], bar.update)):
                            geometry[s] = g
                    return geometry[sid].n_planes

                return capacity

            quotas = {
                split: deal_slices(requested[split], splits[split], capacity_in(splits[split])) for split in SPLITS
            }

        jobs = [
            (split, sid, quotas[split][sid]) for split in SPLITS for sid in sorted(splits[split]) if quotas[split][sid]
        ]
        with tqdm(total=len(jobs), desc="prepare: slices", unit="subject", disable=progress_disabled()) as bar:
            done = pool.map(
                extract_job,
                [(reader, kept[sid], split, quota, seed, geometry[sid]) for split, sid, quota in jobs],
                bar.update,
            )
    return geometry, {sid: r for (_, sid, _), r in zip(jobs, done)}


def _check_bias(
    bias_check: BiasCheck, params: Params, splits: dict, results: dict[str, SubjectSlices], sets: dict, applied: str
) -> dict | None:
    """``bias_check`` on the prepared train and test sets and the target slices of the other
    bias-correction variant (``check_target`` of each subject, in the sets' order)."""

    def other(split):
        parts = [results[sid].arrays["check_target"] for sid in sorted(splits[split]) if sid in results]
        return np.concatenate(parts) if parts else None

    return bias_check(params, sets["train"], sets["test"], other("train"), other("test"), applied)


def _assemble(
    split: str, ids: list[str], results: dict[str, SubjectSlices], mods: Modalities, use_labels: bool, size: int
) -> SliceSet:
    def cat(key, dtype, shape=(size, size)):
        parts = [results[sid].arrays[key] for sid in ids]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros((0, *shape), dtype)

    extras = {m: cat(m, np.float32) for m in mods.extras} if split != "train" else {}
    subject = (
        np.concatenate([np.full(len(results[sid].arrays["slice_index"]), sid) for sid in ids])
        if ids
        else np.zeros(0, dtype=str)
    )
    return SliceSet(
        source=cat(mods.source, np.float32),
        target=cat(mods.target, np.float32),
        mask=cat("mask", bool),
        label=cat("label", np.uint8),
        subject=subject.astype(str),
        slice_index=cat("slice_index", np.int32, shape=()),
        has_label=use_labels,
        extra=extras,
    )


def _mask_note(params: Params, mode: str, mods: Modalities) -> str:
    if mode == "labels":
        return "tissue map > 0"
    if mode == "strip":
        return (
            f"BET skull stripping (brainextractor, f = {params.prepare.strip_threshold:g}) of the {mods.target} "
            "volume on the source grid"
        )
    return f"source > {FOREGROUND} x its 99th percentile, largest component, holes filled per axial plane"


def _label_note(params: Params, use_labels: bool) -> str:
    if use_labels:
        return "tissue maps from the -label volumes (0 background, 1 CSF, 2 GM, 3 WM)"
    if params.data.source == "brats":
        return (
            "BraTS segmentations hold tumour labels, not tissue classes: not used as label (all 0); "
            "subjects[...].tumour_segmentation names the file"
        )
    return "no tissue maps: label is all 0"


def _sitk_version() -> str:
    import SimpleITK as sitk

    return f"SimpleITK {sitk.__version__}"
