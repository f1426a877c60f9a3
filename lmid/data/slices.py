"""The prepared-slice format every step after ``prepare`` reads.

One compressed ``.npz`` per split (``train.npz``, ``val.npz``, ``test.npz``) holding, for N slices
of size H×W:

=================  ================  ==============================================================
array              shape, dtype      meaning
=================  ================  ==============================================================
``source``         (N, H, W) f32     source modality (PD by default), normalised to [0, 1]
``target``         (N, H, W) f32     target modality (T1), registered to the source, in [0, 1]
``mask``           (N, H, W) bool    brain mask
``label``          (N, H, W) u1      0 background, 1 CSF, 2 GM, 3 WM (all 0 when unknown)
``has_label``      () bool           whether ``label`` holds ground truth
``subject``        (N,) str          subject id (e.g. ``IXI012``)
``slice_index``    (N,) i4           axial index in the subject's source volume
``extra_<MOD>``    (N, H, W) f32     val/test only: other modalities of the same slices (e.g. T2)
=================  ================  ==============================================================

Slices are float32 in [0, 1]. The JSON manifest next to them records modalities, counts, the
normalisation of every volume and the geometry needed to write NIfTI volumes back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmid.errors import InputFileError
from lmid.io import load_npz, save_npz

REQUIRED = ("source", "target", "mask", "label", "subject", "slice_index")
LABELS = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}


@dataclass
class SliceSet:
    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    label: np.ndarray
    subject: np.ndarray
    slice_index: np.ndarray
    has_label: bool = False
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.source.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.source.shape[1:])

    def modality(self, name: str, source_modality: str, target_modality: str) -> np.ndarray:
        """Images of one modality by name (``source``/``target`` or the modality's own name)."""
        if name in ("source", source_modality):
            return self.source
        if name in ("target", target_modality):
            return self.target
        if name in self.extra:
            return self.extra[name]
        raise KeyError(
            f"modality {name!r} not in this split (has {source_modality}, {target_modality}, {sorted(self.extra)})"
        )

    def subset(self, index) -> "SliceSet":
        index = np.asarray(index)
        return SliceSet(
            source=self.source[index],
            target=self.target[index],
            mask=self.mask[index],
            label=self.label[index],
            subject=self.subject[index],
            slice_index=self.slice_index[index],
            has_label=self.has_label,
            extra={k: v[index] for k, v in self.extra.items()},
        )

    def save(self, path: str | Path) -> None:
        arrays = dict(
            source=self.source.astype(np.float32),
            target=self.target.astype(np.float32),
            mask=self.mask.astype(bool),
            label=self.label.astype(np.uint8),
            subject=np.asarray(self.subject, dtype=str),
            slice_index=self.slice_index.astype(np.int32),
            has_label=np.asarray(bool(self.has_label)),
        )
        arrays.update({f"extra_{k}": v.astype(np.float32) for k, v in self.extra.items()})
        save_npz(path, **arrays)


def split_fingerprint(split: SliceSet) -> str:
    """SHA-256 of what a split holds: the bytes of every image (source, target and each extra
    modality, by name), the masks and labels, and which subject and plane each slice is.

    Two splits of the same subjects and planes made from other volumes (the unseen protocol's
    twin, another prepare of other data) differ, so a translation can be paired with the one
    split it was made from. Shards and gathered translations record it (``split_fingerprint``)."""
    import hashlib

    digest = hashlib.sha256()

    def add(name: str, array) -> None:
        array = np.ascontiguousarray(array)
        digest.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
        digest.update(array.tobytes())

    add("source", split.source.astype(np.float32))
    add("target", split.target.astype(np.float32))
    for name in sorted(split.extra):
        add(f"extra_{name}", split.extra[name].astype(np.float32))
    add("mask", split.mask.astype(bool))
    add("label", split.label.astype(np.uint8))
    add("has_label", np.asarray(bool(split.has_label)))
    add("slice_index", np.asarray(split.slice_index, dtype=np.int64))
    digest.update("\n".join(map(str, split.subject)).encode())
    return digest.hexdigest()


def check_translated_from(path: str | Path, arrays: dict, split: SliceSet, slices_path: str | Path) -> None:
    """Refuse translations (a shard or a gathered file) that were not made from this split."""
    if "split_fingerprint" not in arrays:
        raise InputFileError(
            path,
            f"records no fingerprint of the split it was translated from, so it cannot be "
            f"paired with {slices_path} (written by an older lmid or by hand): translate again",
        )
    if str(arrays["split_fingerprint"]) != split_fingerprint(split):
        raise InputFileError(path, f"was translated from another split than {slices_path} (their contents differ)")


def spread_indices(n_total: int, n: int) -> np.ndarray:
    """``n`` indices spread evenly over ``n_total`` slices (all when ``n`` is 0 or larger).

    Splits are ordered by subject, so an even spread reaches every subject of the split, where
    the first ``n`` slices would cover only the first few.
    """
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(int))


def load_slices(path: str | Path, allow_empty: bool = False) -> SliceSet:
    """Load and check a split file; errors name the file and the problem."""
    z = load_npz(path, REQUIRED)
    src = z["source"]
    if src.ndim != 3:
        raise InputFileError(path, f"'source' must have shape (N, H, W), got {src.shape}")
    n, h, w = src.shape
    for key in ("target", "mask", "label"):
        if z[key].shape != src.shape:
            raise InputFileError(path, f"'{key}' has shape {z[key].shape}, expected {src.shape}")
    extra_keys = sorted(k for k in z if k.startswith("extra_"))
    for key in extra_keys:
        if z[key].shape != src.shape:
            raise InputFileError(path, f"'{key}' has shape {z[key].shape}, expected {src.shape}")
    # The extra modalities are translated like the source (T2 → T1): the same checks.
    for key in ("source", "target", *extra_keys):
        if not np.issubdtype(z[key].dtype, np.floating):
            raise InputFileError(path, f"'{key}' must be floating point, got {z[key].dtype}")
        if n and not np.all(np.isfinite(z[key])):
            raise InputFileError(path, f"'{key}' contains NaN/Inf values")
        # Slices are normalised to [0, 1] by prepare; anything else was not made by it and would
        # be scored (and segmented) on another scale without a word.
        lo, hi = (float(z[key].min()), float(z[key].max())) if n else (0.0, 1.0)
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise InputFileError(path, f"'{key}' holds values in [{lo:.4g}, {hi:.4g}]; slices must lie in [0, 1]")
    if (
        n
        and z["label"].size
        and (np.min(z["label"]) < 0 or np.max(z["label"]) > 3 or not np.all(np.equal(np.mod(z["label"], 1), 0)))
    ):
        raise InputFileError(
            path,
            "'label' must hold the tissue classes 0 (background), 1 CSF, 2 GM, 3 WM; found "
            f"values in [{np.min(z['label'])}, {np.max(z['label'])}]",
        )
    for key in ("subject", "slice_index"):
        if z[key].shape != (n,):
            raise InputFileError(path, f"'{key}' has shape {z[key].shape}, expected ({n},)")
    if n == 0 and not allow_empty:
        raise InputFileError(path, "split holds no slices (is the split empty? check prepare.slices and prepare.split)")
    extra = {k[len("extra_") :]: z[k].astype(np.float32) for k in extra_keys}
    return SliceSet(
        source=src.astype(np.float32),
        target=z["target"].astype(np.float32),
        mask=z["mask"].astype(bool),
        label=z["label"].astype(np.uint8),
        subject=z["subject"].astype(str),
        slice_index=z["slice_index"].astype(np.int64),
        has_label=bool(z["has_label"]) if "has_label" in z else False,
        extra=extra,
    )
