"""One subject, read for ``lmid prepare``: its brain mask and registrations (:class:`Geometry`),
then its slices (:class:`SubjectSlices`).

Every volume is loaded on its canonical grid (:class:`lmid.data.geometry.Volume`) and brought onto
the source's: identical grids are used as they are, another grid is registered to the source
(:mod:`lmid.data.registration`, when ``data.registration``), otherwise different shapes are an
error naming the files. The geometry of a subject is computed once, when its brain range is first
needed, and kept (bit-packed mask, the registration's transform rather than the resampled volume)
for its slices. The module-level job functions are what worker processes run
(:class:`lmid.parallel.Workers`).
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmid.config import Params
from lmid.data.brainmask import head_mask, n4_correct, strip_skull
from lmid.data.geometry import Volume, bounding_square, brain_planes, normalise, resize_image, resize_labels
from lmid.data.ixi import LABEL, SubjectFiles
from lmid.data.splits import spread
from lmid.data.subjects import Modalities
from lmid.errors import InputFileError, ParamsError

log = logging.getLogger(__name__)

#: Fraction of the source's brain mask that every other volume must cover (non-zero) once on the
#: source grid; less means registration failed or the files are of different heads.
MIN_COVERAGE = 0.9


@dataclass
class SubjectSlices:
    arrays: dict[str, np.ndarray]
    manifest: dict = field(default_factory=dict)


@dataclass
class Geometry:
    """What a subject's slices are cut from: its brain mask (bit-packed, to keep hundreds of IXI
    subjects in memory) and the registrations that brought other volumes onto the source grid."""

    shape: tuple[int, int, int]
    packed_mask: np.ndarray
    n_planes: int
    registration: dict  #: modality -> info of :func:`lmid.data.registration.register` (or a note)
    mask_info: dict
    seconds: float  #: wall time of the mask (and registration); logged, not in the manifest

    @property
    def mask(self) -> np.ndarray:
        n = int(np.prod(self.shape))
        return np.unpackbits(self.packed_mask, count=n).astype(bool).reshape(self.shape)


def mask_mode(params: Params, use_labels: bool) -> str:
    """``prepare.brain_mask`` with ``auto`` resolved (see :class:`lmid.config.PrepareParams`)."""
    mode = params.prepare.brain_mask
    if mode == "auto":
        if params.data.source == "brats":
            mode = "head"
        elif params.data.source == "simulated" and not params.simulate.head:
            mode = "labels"
        else:
            mode = "strip"
    if mode == "labels" and not use_labels:
        raise ParamsError(
            f"prepare.brain_mask: 'labels' needs tissue maps, and the {params.data.source} data has "
            "none (use strip or head)"
        )
    return mode


class SubjectReader:
    """Reads subjects for ``prepare`` (in worker processes too: it is pickled with each job).

    ``check_bias``: also cut the real target's slices as the other bias-correction variant would
    (``check_target``: without N4 when N4 is applied, with N4 otherwise), for the check that
    compares the two (:mod:`lmid.evaluation.bias_check`); only where tissue maps exist."""

    def __init__(self, params: Params, mods: Modalities, use_labels: bool, root: Path, check_bias: bool = False):
        self.params, self.mods, self.use_labels, self.root = params, mods, use_labels, root
        self.mode = mask_mode(params, use_labels)
        self.bias = params.prepare.bias_correction
        self.check_bias = check_bias and use_labels

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def _volume(self, subj: SubjectFiles, modality: str) -> Volume:
        return Volume.load(subj.files[subj.find(modality)])

    def _source_and_label(self, subj: SubjectFiles) -> tuple[Volume, np.ndarray | None]:
        source = self._volume(subj, self.mods.source)
        if not self.use_labels:
            return source, None
        lab = self._volume(subj, LABEL)
        self._check_same_grid(subj, source, lab, why="tissue maps are never registered")
        label = np.rint(lab.data)
        bad = np.setdiff1d(np.unique(label), [0, 1, 2, 3])
        if bad.size or np.abs(lab.data - label).max() > 1e-3:
            raise InputFileError(
                lab.path,
                "tissue map must hold the integers 0 (background), 1 (CSF), 2 (GM), 3 (WM)"
                f"; found {np.unique(lab.data)[:8].tolist()}",
            )
        return source, label.astype(np.uint8)

    def geometry(self, subj: SubjectFiles) -> Geometry:
        """The subject's brain mask (``prepare.brain_mask``) and any registration it needed."""
        t0 = time.perf_counter()
        source, label = self._source_and_label(subj)
        registration: dict = {}
        mask_info: dict = {"mode": self.mode}
        if self.mode == "labels":
            mask = label > 0
        elif self.mode == "head":
            mask = head_mask(source.data)
        else:  # strip the target (CSF is dark there) once it is on the source grid
            target = self._volume(subj, self.mods.target)
            vol = self._on_source_grid(subj, source, target, registration, self.mods.target)
            mask, info = strip_skull(vol, source.affine, self.params.prepare.strip_threshold)
            mask_info.update(info, stripped=self.mods.target)
        if not mask.any():
            raise InputFileError(source.path, f"no brain voxels found (empty mask, prepare.brain_mask: {self.mode})")
        seconds = time.perf_counter() - t0
        log.info("%s: brain mask (%s) in %.1f s", subj.subject, self.mode, seconds)
        return Geometry(
            shape=tuple(int(n) for n in mask.shape),
            packed_mask=np.packbits(mask.ravel()),
            n_planes=int(len(brain_planes(mask, self.params.prepare.min_brain_fraction))),
            registration=registration,
            mask_info=mask_info,
            seconds=seconds,
        )

    def _check_same_grid(self, subj, a: Volume, b: Volume, why: str = "data.registration is false") -> bool:
        """True if the grids are identical; an error if the shapes differ (and nothing registers them)."""
        from lmid.data.registration import same_grid

        if same_grid(a.shape, a.affine, b.shape, b.affine):
            return True
        if tuple(a.shape) != tuple(b.shape):
            raise InputFileError(
                b.path,
                f"shape {tuple(b.shape)} differs from {self._rel(a.path)} {tuple(a.shape)} "
                f"(subject {subj.subject}) and they cannot be paired voxel by voxel ({why})",
            )
        log.warning("%s: same shape as %s but another affine; paired voxel by voxel", b.path, a.path.name)
        return True

    def extract(self, subj: SubjectFiles, split: str, quota: int, seed: int, geometry: Geometry) -> SubjectSlices:
        """``quota`` slices of the subject, spread over its brain range, every modality of ``split``."""
        p = self.params.prepare
        size = p.size
        source, label = self._source_and_label(subj)
        mask = geometry.mask
        planes = brain_planes(mask, p.min_brain_fraction)
        rng = np.random.default_rng([seed, zlib.crc32(subj.subject.encode())])
        chosen = spread(planes, quota, rng)
        square = bounding_square(mask, planes, source.affine, size)
        want = [self.mods.source, self.mods.target] + (list(self.mods.extras) if split != "train" else [])
        registration = dict(geometry.registration)
        volumes = self._on_source_grid_all(subj, source, want[1:], registration)
        coverage = self._coverage(subj, source, volumes, mask, registration)
        arrays: dict[str, np.ndarray] = {}
        norm: dict[str, dict] = {}
        bias: dict[str, dict] = {}

        def slices_of(vol, path):
            x, lo, hi = normalise(vol, mask, p.percentiles, path)
            return np.stack([resize_image(square.crop(x[:, :, k]), size) for k in chosen]), {"lo": lo, "hi": hi}

        n4 = self.bias == "n4"
        for mod, (path, vol) in volumes.items():
            raw = vol
            check = mod == self.mods.target and self.check_bias
            if n4 or check:
                corrected, bias[mod] = n4_correct(vol, source.affine, mask)
                if n4:
                    vol = corrected
                if check:  # the other variant, for the with/without check
                    arrays["check_target"] = slices_of(raw if n4 else corrected, path)[0]
            arrays[mod], norm[mod] = slices_of(vol, path)
        arrays["mask"] = (
            np.stack([resize_labels(square.crop(mask[:, :, k].astype(np.uint8)), size) for k in chosen]) > 0
        )
        if label is not None:
            arrays["label"] = np.stack([resize_labels(square.crop(label[:, :, k]), size) for k in chosen])
        else:
            arrays["label"] = np.zeros((len(chosen), size, size), np.uint8)
        cover = [float(np.mean(volumes[self.mods.target][1][:, :, k][mask[:, :, k]] > 0)) for k in chosen]
        files = {m: self._rel(subj.files[subj.find(m)]) for m in want}
        if label is not None:
            files[LABEL] = self._rel(subj.files[subj.find(LABEL)])
        affine = source.affine
        entry = {
            "split": split,
            "site": subj.site,
            "files": files,
            "n_axial": int(source.shape[2]),
            "shape": [int(s) for s in source.shape],
            "affine": affine.tolist(),
            "slice_affine": (affine @ square.matrix()).tolist(),
            "crop": {"i0": square.i0, "n_i": square.n_i, "j0": square.j0, "n_j": square.n_j},
            "brain_planes": {"count": int(len(planes)), "first": int(planes[0]), "last": int(planes[-1])},
            "slices": [int(k) for k in chosen],
            "brain_mask": {
                **geometry.mask_info,
                "voxels": int(mask.sum()),
                "volume_ml": float(mask.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000.0),
            },
            "brain_mask_coverage": coverage,
            "normalisation": norm,
            "bias_correction": bias if n4 else {},
            "registration": registration,
            "target_coverage": float(np.mean(cover)) if cover else 1.0,
        }
        if self.params.data.source == "brats":
            from lmid.data.brats import SEGMENTATION

            key = subj.find(SEGMENTATION)
            entry["tumour_segmentation"] = self._rel(subj.files[key]) if key else None
        arrays["slice_index"] = np.asarray(chosen, np.int32)
        return SubjectSlices(arrays=arrays, manifest=entry)

    def _on_source_grid_all(
        self, subj: SubjectFiles, source: Volume, modalities: list[str], registration: dict
    ) -> dict[str, tuple[Path, np.ndarray]]:
        """Modality -> (its file, its voxels on the source grid), the source first."""
        volumes = {self.mods.source: (source.path, source.data)}
        for mod in modalities:
            moving = self._volume(subj, mod)
            volumes[mod] = (moving.path, self._on_source_grid(subj, source, moving, registration, mod))
        return volumes

    def _coverage(self, subj, source: Volume, volumes: dict, mask: np.ndarray, registration: dict) -> dict[str, float]:
        """The fraction of the brain mask that each other volume covers (an error below :data:`MIN_COVERAGE`)."""
        coverage: dict[str, float] = {}
        for mod, (path, vol) in list(volumes.items())[1:]:
            covered = coverage[mod] = float(np.mean(vol[mask] > 0))
            if covered < MIN_COVERAGE:
                raise InputFileError(
                    path,
                    f"covers only {100 * covered:.0f} % of the brain mask of {self._rel(source.path)} "
                    f"(subject {subj.subject}; at least {100 * MIN_COVERAGE:.0f} % needed): "
                    + (
                        "registration failed or the volumes do not show the same head"
                        if isinstance(registration.get(mod), dict)
                        else "the volumes do not show the same head"
                    ),
                )
        return coverage

    def _on_source_grid(self, subj, source: Volume, moving: Volume, registration: dict, mod: str) -> np.ndarray:
        """``moving``'s voxels on the source grid: as is, or registered to the source (recorded in
        ``registration``; a registration already recorded there is applied again, not repeated)."""
        from lmid.data.registration import RegistrationSettings, apply_registration, register, same_grid

        if same_grid(source.shape, source.affine, moving.shape, moving.affine):
            registration[mod] = "same grid as the source"
            return moving.data
        if not self.params.data.registration:
            self._check_same_grid(subj, source, moving)
            registration[mod] = "different affine, same shape: paired voxel by voxel (data.registration false)"
            return moving.data
        if isinstance(registration.get(mod), dict):
            return apply_registration(moving.data, moving.affine, source.shape, source.affine, registration[mod])
        t0 = time.perf_counter()
        try:
            result = register(
                source.data, source.affine, moving.data, moving.affine, RegistrationSettings(seed=self.params.seed)
            )
        except RuntimeError as err:  # ITK: e.g. "All samples map outside moving image buffer"
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise InputFileError(
                moving.path,
                f"registration to {self._rel(source.path)} failed ({first}); do the two volumes "
                "overlap in world coordinates? (check their headers)",
            ) from None
        log.info("%s: %s registered to %s in %.1f s", subj.subject, mod, self.mods.source, time.perf_counter() - t0)
        registration[mod] = result.info
        return result.data


def geometry_job(reader: SubjectReader, subj: SubjectFiles) -> Geometry:
    """:meth:`SubjectReader.geometry`, as a worker process runs it."""
    return reader.geometry(subj)


def extract_job(
    reader: SubjectReader, subj: SubjectFiles, split: str, quota: int, seed: int, geometry: Geometry
) -> SubjectSlices:
    """:meth:`SubjectReader.extract`, as a worker process runs it."""
    return reader.extract(subj, split, quota, seed, geometry)
