"""Where a prepared slice comes from: volumes on their canonical grid, and the in-plane window.

A volume is reoriented to the closest RAS+ orientation (3rd axis axial, :class:`Volume`); the
brain range is the axial planes with enough mask (:func:`brain_planes`); one square window in mm
around the brain (:func:`bounding_square`, :class:`Square`) is cut from each chosen plane, shown
anterior up, and resized to ``prepare.size``. ``lmid apply`` cuts a scan's slices with the same
functions as ``lmid prepare``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmid.errors import InputFileError
from lmid.io import load_volume

#: Margin around the brain's bounding square, as a fraction of its side on each side.
MARGIN = 0.05
ORIENTATION = "rows anterior->posterior, columns along RAS+ x (patient's right to the right)"


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


@dataclass(frozen=True)
class Volume:
    """A checked volume on its canonical grid (:func:`load_canonical`) and the file it came from."""

    data: np.ndarray
    affine: np.ndarray
    path: Path

    @classmethod
    def load(cls, path: Path) -> "Volume":
        return cls(*load_canonical(path), path)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape
