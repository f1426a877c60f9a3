"""``lmid prepare``: volumes -> normalised axial slices in subject-level train/val/test splits.

What happens, in order (every choice the paper leaves open is written down here and recorded in
``manifest.json`` next to the slices):

1. **Find the volumes** (:mod:`lmid.data.ixi` for ``simulated``/``ixi``, :mod:`lmid.data.brats`).
   A subject needs the source, the target and every ``data.extra_modalities`` volume; the
   simulated data set also needs its tissue map (``label``). Subjects missing one are skipped with
   a warning and listed with the reason. IXI subjects also carry tissue maps when *every* kept
   subject has a ``-label`` volume. ``data.sites`` keeps only those sites (IXI layout only).
2. **Split by subject**: a seeded shuffle, then ``prepare.split`` fractions with at least one
   subject in every split whose fraction is positive (no subject is in two splits).
3. **Share out slices**: ``prepare.slices.<split>`` slices are dealt one at a time round the
   split's subjects (in the shuffled order) so counts differ by at most one between subjects,
   skipping subjects whose brain range is used up. Volumes of a subject that gets no slice are not
   read at all (paper-scale IXI has about as many subjects as slices).
4. **Per subject**:

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
      brain range, :data:`MARGIN` wider on each side, zero outside the volume; resized to
      ``prepare.size``² with ``skimage.transform.resize`` (order 1 with anti-aliasing for
      images, order 0 for mask and labels). Slices are shown *anterior up, patient's left on
      the left* (rows run anterior -> posterior, columns along RAS+ x).
   Subjects are read in parallel (``--threads`` worker processes, each on one thread). The mask
   and any registration of a subject are computed once, when its brain range is first needed,
   and reused for its slices (the registration's transform, not the resampled volume, is kept).
5. **Check the bias correction** where tissue maps exist: the 3-cluster K-Means Dice of the real
   target's test slices against the tissue maps, with and without N4 (``manifest["bias_check"]``,
   shown in the report's Protocol section).
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
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmid.config import Params
from lmid.data.brainmask import FOREGROUND, N4_DILATION_MM, head_mask, n4_correct, strip_skull
from lmid.data.ixi import LABEL, FolderScan, SubjectFiles
from lmid.data.slices import SliceSet
from lmid.errors import InputFileError, LmidError, ParamsError
from lmid.io import load_volume, replaced_folder, write_json
from lmid.progress import progress_disabled

log = logging.getLogger(__name__)

#: Fraction of the source's brain mask that every other volume must cover (non-zero) once on the
#: source grid; less means registration failed or the files are of different heads.
MIN_COVERAGE = 0.9
#: Margin around the brain's bounding square, as a fraction of its side on each side.
MARGIN = 0.05
SPLITS = ("train", "val", "test")
ORIENTATION = "rows anterior->posterior, columns along RAS+ x (patient's right to the right)"


# ------------------------------------------------------------------------------- modalities
@dataclass(frozen=True)
class Modalities:
    source: str
    target: str
    extras: tuple[str, ...]
    labels: bool  #: tissue maps required (simulated)

    @property
    def images(self) -> tuple[str, ...]:
        return (self.source, self.target, *self.extras)


def _modalities(params: Params) -> Modalities:
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


def _scan(params: Params, raw_dir: Path) -> FolderScan:
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


def _select_subjects(params: Params, scan: FolderScan, mods: Modalities):
    """Subjects with every needed volume (name -> {modality: path}), skipped ones with reasons."""
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
        detail = "; ".join(f"{n} subject(s) {r}" for r, n in _count(skipped.values()).items()) or "none found"
        site_note = f" ({len(excluded)} excluded by data.sites={params.data.sites})" if excluded else ""
        hint = " (set data.extra_modalities: [] if the extra modalities are not available)" if mods.extras else ""
        raise LmidError(
            f"{scan.root}: no subject has every needed volume ({', '.join(needed)}): {detail}{site_note}{hint}"
        )
    use_labels = mods.labels or (params.data.source == "ixi" and all(s.find(LABEL) for s in kept.values()))
    return kept, skipped, excluded, use_labels


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# ---------------------------------------------------------------------------------- splitting
def split_subjects(subjects: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[str]]:
    """Seeded shuffle, then largest-remainder counts with >= 1 subject for each positive fraction.

    Lists keep the shuffled order (slices are dealt in that order).
    """
    n = len(subjects)
    need = [s for s in SPLITS if fractions[s] > 0]
    if n < len(need):
        raise LmidError(
            f"{n} usable subject(s) cannot fill the {len(need)} splits {', '.join(need)} "
            f"(one subject at least each); add subjects or set prepare.split.val: 0"
        )
    exact = {s: fractions[s] * n for s in SPLITS}
    counts = {s: int(np.floor(exact[s])) for s in SPLITS}
    for s in sorted(SPLITS, key=lambda s: (counts[s] - exact[s], SPLITS.index(s)))[: n - sum(counts.values())]:
        counts[s] += 1
    for s in need:  # every positive split gets a subject, taken from the largest
        while counts[s] == 0:
            donor = max(SPLITS, key=lambda t: (counts[t] if t != s else -1, -SPLITS.index(t)))
            counts[donor] -= 1
            counts[s] += 1
    order = [subjects[i] for i in np.random.default_rng([seed, 0x5B117]).permutation(n)]
    out, start = {}, 0
    for s in SPLITS:
        out[s] = order[start : start + counts[s]]
        start += counts[s]
    return out


def deal_slices(n: int, order: list[str], capacity) -> dict[str, int]:
    """Deal ``n`` slices one at a time round ``order``; ``capacity(subject)`` is asked lazily."""
    quota = dict.fromkeys(order, 0)
    caps: dict[str, int] = {}
    remaining = n
    while remaining > 0:
        dealt = False
        for sid in order:
            if remaining == 0:
                break
            if sid not in caps:
                caps[sid] = capacity(sid)
            if quota[sid] < caps[sid]:
                quota[sid] += 1
                remaining -= 1
                dealt = True
        if not dealt:
            break
    return quota


def spread(candidates: np.ndarray, q: int, rng: np.random.Generator) -> np.ndarray:
    """``q`` of the sorted ``candidates``, one from each of ``q`` equal strata (seeded offset)."""
    c = len(candidates)
    if q >= c:
        return candidates.copy()
    pos = np.floor((np.arange(q) + rng.random()) * c / q).astype(int)
    return candidates[np.minimum(pos, c - 1)]


# ---------------------------------------------------------------------------- volume handling
def load_canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A checked volume reoriented to the closest RAS+ orientation (3rd axis axial)."""
    return to_canonical(*load_volume(path))


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data`` reoriented to the closest RAS+ orientation (``nibabel.as_closest_canonical``): axes
    permuted and flipped, no resampling, so the 3rd axis is axial."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def normalise(data: np.ndarray, mask: np.ndarray, percentiles, path: Path) -> tuple[np.ndarray, float, float]:
    """Clip to the percentiles inside ``mask`` and map to [0, 1]."""
    lo, hi = (float(v) for v in np.percentile(data[mask], list(percentiles)))
    if not hi > lo:
        raise InputFileError(path, f"intensities inside the brain mask are constant ({lo:g}); cannot normalise")
    out = np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return out, lo, hi


def brain_planes(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    area = mask.sum(axis=(0, 1))
    if area.max() == 0:
        return np.zeros(0, int)
    return np.flatnonzero((area >= min_fraction * area.max()) & (area > 0))


@dataclass
class Square:
    """The in-plane crop window (voxels of the canonical source grid) and its slice affine."""

    i0: int
    n_i: int
    j0: int
    n_j: int
    size: int

    def matrix(self) -> np.ndarray:
        """(row, col, k) of the output grid -> (i, j, k) of the volume.

        A crop C[a, b] = V[i0 + a, j0 + b] is shown as D = flipud(C.T) (anterior up), and
        ``skimage.transform.resize`` samples D at ``(p + 0.5)·n/size − 0.5``.
        """
        si, sj = self.n_i / self.size, self.n_j / self.size
        return np.array(
            [
                [0.0, si, 0.0, self.i0 + 0.5 * si - 0.5],
                [-sj, 0.0, 0.0, self.j0 + self.n_j - 0.5 - 0.5 * sj],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )

    def crop(self, plane: np.ndarray) -> np.ndarray:
        """The window of one axial plane (zero outside the volume), anterior up."""
        out = np.zeros((self.n_i, self.n_j), plane.dtype)
        a0, b0 = max(0, self.i0), max(0, self.j0)
        a1, b1 = min(plane.shape[0], self.i0 + self.n_i), min(plane.shape[1], self.j0 + self.n_j)
        if a1 > a0 and b1 > b0:
            out[a0 - self.i0 : a1 - self.i0, b0 - self.j0 : b1 - self.j0] = plane[a0:a1, b0:b1]
        return out.T[::-1]


def bounding_square(mask: np.ndarray, planes: np.ndarray, affine: np.ndarray, size: int) -> Square:
    """Square (in mm) around the mask of ``planes``, widened by :data:`MARGIN` on each side."""
    sub = mask[:, :, planes].any(axis=2)
    ii, jj = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
    di, dj = np.linalg.norm(affine[:3, :2], axis=0)  # voxel size (mm) along i and j
    side_mm = max((ii[-1] - ii[0] + 1) * di, (jj[-1] - jj[0] + 1) * dj) * (1 + 2 * MARGIN)
    n_i, n_j = int(np.ceil(side_mm / di)), int(np.ceil(side_mm / dj))
    ci, cj = (ii[0] + ii[-1]) / 2.0, (jj[0] + jj[-1]) / 2.0
    return Square(
        i0=int(np.floor(ci - (n_i - 1) / 2.0)), n_i=n_i, j0=int(np.floor(cj - (n_j - 1) / 2.0)), n_j=n_j, size=size
    )


def resize_image(plane: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    out = resize(plane, (size, size), order=1, anti_aliasing=True, preserve_range=True, mode="edge")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def resize_labels(plane: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    return resize(plane, (size, size), order=0, anti_aliasing=False, preserve_range=True, mode="edge").astype(
        plane.dtype
    )


# --------------------------------------------------------------------------- per subject work
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
    def __init__(self, params: Params, mods: Modalities, use_labels: bool, root: Path):
        self.params, self.mods, self.use_labels, self.root = params, mods, use_labels, root
        self.mode = mask_mode(params, use_labels)
        self.bias = params.prepare.bias_correction

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def _source_and_label(self, subj: SubjectFiles):
        src_path = subj.files[subj.find(self.mods.source)]
        source, affine = load_canonical(src_path)
        label = None
        if self.use_labels:
            lab_path = subj.files[subj.find(LABEL)]
            lab, lab_aff = load_canonical(lab_path)
            self._check_same_grid(
                subj,
                src_path,
                source.shape,
                affine,
                lab_path,
                lab.shape,
                lab_aff,
                why="tissue maps are never registered",
            )
            label = np.rint(lab)
            bad = np.setdiff1d(np.unique(label), [0, 1, 2, 3])
            if bad.size or np.abs(lab - label).max() > 1e-3:
                raise InputFileError(
                    lab_path,
                    "tissue map must hold the integers 0 (background), 1 (CSF), 2 (GM), 3 (WM)"
                    f"; found {np.unique(lab)[:8].tolist()}",
                )
            label = label.astype(np.uint8)
        return src_path, source, affine, label

    def geometry(self, subj: SubjectFiles) -> Geometry:
        """The subject's brain mask (``prepare.brain_mask``) and any registration it needed."""
        t0 = time.perf_counter()
        src_path, source, affine, label = self._source_and_label(subj)
        registration: dict = {}
        mask_info: dict = {"mode": self.mode}
        if self.mode == "labels":
            mask = label > 0
        elif self.mode == "head":
            mask = head_mask(source)
        else:  # strip the target (CSF is dark there) once it is on the source grid
            path = subj.files[subj.find(self.mods.target)]
            vol, aff = load_canonical(path)
            vol = self._on_source_grid(subj, src_path, source, affine, path, vol, aff, registration, self.mods.target)
            mask, info = strip_skull(vol, affine, self.params.prepare.strip_threshold)
            mask_info.update(info, stripped=self.mods.target)
        if not mask.any():
            raise InputFileError(src_path, f"no brain voxels found (empty mask, prepare.brain_mask: {self.mode})")
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

    def _check_same_grid(
        self, subj, path_a, shape_a, aff_a, path_b, shape_b, aff_b, why: str = "data.registration is false"
    ) -> bool:
        """True if the grids are identical; an error if the shapes differ (and nothing registers them)."""
        from lmid.data.registration import same_grid

        if same_grid(shape_a, aff_a, shape_b, aff_b):
            return True
        if tuple(shape_a) != tuple(shape_b):
            raise InputFileError(
                path_b,
                f"shape {tuple(shape_b)} differs from {self._rel(path_a)} {tuple(shape_a)} "
                f"(subject {subj.subject}) and they cannot be paired voxel by voxel ({why})",
            )
        log.warning("%s: same shape as %s but another affine; paired voxel by voxel", path_b, path_a.name)
        return True

    def extract(self, subj: SubjectFiles, split: str, quota: int, seed: int, geometry: Geometry) -> SubjectSlices:
        p = self.params.prepare
        size = p.size
        src_path, source, affine, label = self._source_and_label(subj)
        mask = geometry.mask
        planes = brain_planes(mask, p.min_brain_fraction)
        rng = np.random.default_rng([seed, zlib.crc32(subj.subject.encode())])
        chosen = spread(planes, quota, rng)
        square = bounding_square(mask, planes, affine, size)
        want = [self.mods.source, self.mods.target] + (list(self.mods.extras) if split != "train" else [])
        volumes = {self.mods.source: (src_path, source)}
        registration = dict(geometry.registration)
        for mod in want[1:]:
            path = subj.files[subj.find(mod)]
            vol, aff = load_canonical(path)
            volumes[mod] = (
                path,
                self._on_source_grid(subj, src_path, source, affine, path, vol, aff, registration, mod),
            )
        coverage: dict[str, float] = {}
        for mod, (path, vol) in list(volumes.items())[1:]:
            covered = coverage[mod] = float(np.mean(vol[mask] > 0))
            if covered < MIN_COVERAGE:
                raise InputFileError(
                    path,
                    f"covers only {100 * covered:.0f} % of the brain mask of {self._rel(src_path)} "
                    f"(subject {subj.subject}; at least {100 * MIN_COVERAGE:.0f} % needed): "
                    + (
                        "registration failed or the volumes do not show the same head"
                        if isinstance(registration.get(mod), dict)
                        else "the volumes do not show the same head"
                    ),
                )
        arrays: dict[str, np.ndarray] = {}
        norm: dict[str, dict] = {}
        bias: dict[str, dict] = {}

        def slices_of(vol, path):
            x, lo, hi = normalise(vol, mask, p.percentiles, path)
            return np.stack([resize_image(square.crop(x[:, :, k]), size) for k in chosen]), {"lo": lo, "hi": hi}

        n4 = self.bias == "n4"
        for mod, (path, vol) in volumes.items():
            raw = vol
            if n4 or (mod == self.mods.target and self.use_labels):
                corrected, bias[mod] = n4_correct(vol, affine, mask)
                if n4:
                    vol = corrected
                if mod == self.mods.target and self.use_labels:  # for the with/without check
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

    def _on_source_grid(self, subj, src_path, source, affine, path, vol, aff, registration: dict, mod: str):
        """``vol`` on the source grid: as is, or registered to the source (recorded in ``registration``;
        a registration already recorded there is applied again, not repeated)."""
        from lmid.data.registration import RegistrationSettings, apply_registration, register, same_grid

        shape = source.shape
        if same_grid(shape, affine, vol.shape, aff):
            registration[mod] = "same grid as the source"
            return vol
        if not self.params.data.registration:
            self._check_same_grid(subj, src_path, shape, affine, path, vol.shape, aff)
            registration[mod] = "different affine, same shape: paired voxel by voxel (data.registration false)"
            return vol
        if isinstance(registration.get(mod), dict):
            return apply_registration(vol, aff, shape, affine, registration[mod])
        t0 = time.perf_counter()
        try:
            result = register(source, affine, vol, aff, RegistrationSettings(seed=self.params.seed))
        except RuntimeError as err:  # ITK: e.g. "All samples map outside moving image buffer"
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise InputFileError(
                path,
                f"registration to {self._rel(src_path)} failed ({first}); do the two volumes "
                "overlap in world coordinates? (check their headers)",
            ) from None
        log.info("%s: %s registered to %s in %.1f s", subj.subject, mod, self.mods.source, time.perf_counter() - t0)
        registration[mod] = result.info
        return result.data


# ------------------------------------------------------------------------------- parallel work
def _geometry_job(reader: SubjectReader, subj: SubjectFiles) -> Geometry:
    return reader.geometry(subj)


def _extract_job(
    reader: SubjectReader, subj: SubjectFiles, split: str, quota: int, seed: int, geometry: Geometry
) -> SubjectSlices:
    return reader.extract(subj, split, quota, seed, geometry)


def _init_worker(log_level: int, log_format: str | None) -> None:
    """Worker processes share the cores among themselves: one thread each (ITK's registration
    runs on one thread anyway, for bit-identical sums). Their log lines go where the parent's go."""
    import os

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"
    logging.basicConfig(level=log_level, format=log_format)


class Workers:
    """Runs per-subject jobs in ``n`` processes (in this one when ``n`` is 1). A subject's result
    does not depend on which process computed it, so outputs are the same for any ``n``."""

    def __init__(self, n: int):
        self.n = max(1, int(n))
        self.pool = None

    def __enter__(self):
        if self.n > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: a clean interpreter per worker (forking a process that holds ITK's or
            # OpenBLAS's threads can deadlock).
            root = logging.getLogger()
            fmt = root.handlers[0].formatter._fmt if root.handlers and root.handlers[0].formatter else None
            self.pool = ProcessPoolExecutor(
                self.n,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(root.level, fmt),
            )
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def map(self, fn, arg_lists, on_done=None) -> list:
        """``[fn(*args) for args in arg_lists]``, in order; ``on_done()`` after each one finishes."""
        if self.pool is None:
            out = []
            for args in arg_lists:
                out.append(fn(*args))
                if on_done:
                    on_done()
            return out
        from concurrent.futures import as_completed

        futures = {self.pool.submit(fn, *args): i for i, args in enumerate(arg_lists)}
        out = [None] * len(futures)
        for fut in as_completed(futures):
            out[futures[fut]] = fut.result()  # re-raises a worker's error (with its message) here
            if on_done:
                on_done()
        return out


# ------------------------------------------------------------------------------------ driver
def prepare(params: Params, raw_dir: Path, out_dir: Path, workers: int = 1) -> dict:
    """Write ``train.npz``, ``val.npz``, ``test.npz`` and ``manifest.json`` into ``out_dir``.

    Subjects are read by ``workers`` processes. Nothing is written unless every step succeeds.
    Returns a summary (counts, skipped, wall time).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    p = params.prepare
    mods = _modalities(params)
    scan = _scan(params, raw_dir)
    kept, skipped, excluded, use_labels = _select_subjects(params, scan, mods)
    splits = split_subjects(sorted(kept), p.split.model_dump(), params.seed)
    reader = SubjectReader(params, mods, use_labels, raw_dir)
    requested = p.slices.model_dump()
    geometry: dict[str, Geometry] = {}

    with Workers(workers) as pool:
        # Share out slices; a subject's brain range is read only when it is first offered a slice
        # (with several workers, that subject and the next ones of its split in the dealing order).
        with tqdm(desc="prepare: brain masks", unit="subject", disable=progress_disabled()) as bar:

            def capacity_in(order: list[str]):
                def capacity(sid: str) -> int:
                    if sid not in geometry:
                        batch = [s for s in order[order.index(sid) :] if s not in geometry][: pool.n]
                        for s, g in zip(batch, pool.map(_geometry_job, [(reader, kept[s]) for s in batch], bar.update)):
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
                _extract_job,
                [(reader, kept[sid], split, quota, params.seed, geometry[sid]) for split, sid, quota in jobs],
                bar.update,
            )
    results: dict[str, SubjectSlices] = {sid: r for (_, sid, _), r in zip(jobs, done)}

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
    bias_check = _bias_check(params, splits, results, sets, reader.bias) if use_labels else None
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
        "bias_check": bias_check,
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
        "skipped": skipped,
        "n_skipped": len(skipped),
        "excluded_by_site": excluded,
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
        len(skipped),
    )
    log.info("prepare: brain mask (%s) %.1f s per subject, on %d worker(s)", reader.mode, mask_seconds, workers)
    return {
        "counts": counts,
        "skipped": skipped,
        "has_label": bool(use_labels),
        "wall_s": wall,
        "brain_mask_s_per_subject": mask_seconds,
    }


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


def _bias_check(params: Params, splits: dict, results: dict[str, SubjectSlices], sets: dict, bias: str) -> dict | None:
    """K-Means Dice (the evaluation's ceiling) of the real target's test slices against the tissue
    maps, with and without N4: the segmenter is fitted on the training slices of each variant."""
    from lmid.evaluation.metrics import dice_per_class
    from lmid.evaluation.segment import SEED_OFFSET, fit_segmenter

    if not len(sets["train"]) or not len(sets["test"]):
        return None
    seg = params.segment

    def other(split):
        ids = [sid for sid in sorted(splits[split]) if sid in results]
        return np.concatenate([results[sid].arrays["check_target"] for sid in ids])

    def ceiling(train, test):
        km = fit_segmenter(
            train,
            sets["train"].mask,
            seg.n_clusters,
            seg.max_voxels,
            params.seed + SEED_OFFSET,
            tuple(seg.tissue_order),
        )
        t = sets["test"]
        return float(
            np.mean([dice_per_class(km.predict(test[i], t.mask[i]), t.label[i])["mean"] for i in range(len(t))])
        )

    applied = ceiling(sets["train"].target, sets["test"].target)
    alternative = ceiling(other("train"), other("test"))
    n4 = bias == "n4"
    return {
        "dice_ceiling_with_n4": applied if n4 else alternative,
        "dice_ceiling_without_n4": alternative if n4 else applied,
        "applied": bias,
        "test_slices": len(sets["test"]),
        "how": "3-cluster K-Means fitted on the real target's training slices, Dice (mean over CSF/GM/WM) of "
        "its test slices against the tissue maps, per slice, averaged",
    }


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
