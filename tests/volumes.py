"""Synthetic volumes in the IXI layout for the prepare, brain-mask and bad-input tests: a folded,
asymmetric brain with four tissue classes, written as NIfTI with tissue-dependent contrasts; and
the tiny preset with dotted-key overrides, as parameters or as a params.yaml."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import yaml
from scipy.ndimage import gaussian_filter

from conftest import TINY

from lmid.config import load_params
from lmid.data.slices import load_slices

SHAPE = (22, 26, 14)
VOXEL = 4.0
# Tissue intensities (bg, CSF, GM, WM) of each contrast: IXI and BraTS names.
CONTRAST = {
    "T1": [0, 0.25, 0.55, 0.85],
    "T2": [0, 1.0, 0.6, 0.45],
    "PD": [0, 1.0, 0.8, 0.65],
    "t1": [0, 0.25, 0.55, 0.85],
    "t1ce": [0, 0.3, 0.6, 0.8],
    "t2": [0, 1.0, 0.6, 0.45],
    "flair": [0, 0.1, 0.7, 0.5],
}


def grid(shape=SHAPE, voxel=VOXEL):
    aff = np.diag([voxel, voxel, voxel, 1.0])
    aff[:3, 3] = -voxel * (np.array(shape) - 1) / 2
    return aff


def tissue(points):
    """0 bg, 1 CSF, 2 GM, 3 WM at world points (N, 3) in RAS mm: a folded, asymmetric brain."""
    x, y, z = points.T
    r = np.sqrt((x / 38) ** 2 + (y / 46) ** 2 + (z / 24) ** 2)
    folded = r * (1 + 0.07 * np.sin(4 * np.arctan2(y, x)) * np.cos(2 * np.arctan2(z, np.hypot(x, y))))
    lab = np.zeros(len(points), np.uint8)
    lab[r < 1.0] = 1
    lab[folded < 0.85] = 2
    lab[folded < 0.6] = 3
    lab[((x + 6) / 5) ** 2 + ((y - 4) / 14) ** 2 + (z / 8) ** 2 < 1] = 1
    return lab


def world(shape, affine):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def image(mod, shape, affine, seed, world_map=None):
    pts = world(shape, affine)
    lab = tissue(world_map(pts) if world_map else pts).reshape(shape)
    rng = np.random.default_rng(seed)
    img = gaussian_filter(np.asarray(CONTRAST[mod])[lab], 0.6) * rng.uniform(200, 800)
    return np.abs(img + rng.normal(0, 4, shape)).astype(np.float32)


def save(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def ixi_folder(root, n=6, mods=("T1", "T2", "PD"), labels=False, t1_grid=None, world_map=None, site="Guys"):
    """``n`` subjects in the IXI layout; ``t1_grid=(shape, affine)`` puts T1 on its own grid."""
    for s in range(n):
        stem = f"IXI{s + 2:03d}-{site}-{s + 800:04d}"
        for j, mod in enumerate(mods):
            shape, aff = (SHAPE, grid()) if (mod != "T1" or t1_grid is None) else t1_grid
            save(
                root / f"{stem}-{mod}.nii.gz",
                image(mod, shape, aff, 100 * s + j, world_map if mod == "T1" else None),
                aff,
            )
        if labels:
            save(root / f"{stem}-label.nii.gz", tissue(world(SHAPE, grid())).reshape(SHAPE), grid())
    if labels:  # a simulated folder is complete only with the phantom.json that `lmid generate` writes last
        (root / "phantom.json").write_text('{"generator": "tests"}\n')
    return root


def set_dotted(tree: dict, overrides: dict) -> dict:
    """``overrides`` such as ``{"prepare.slices.train": 4}`` written into the nested ``tree`` (made
    where missing); returns ``tree``."""
    for key, value in overrides.items():
        node = tree
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return tree


def params_file(folder: Path, **overrides) -> Path:
    """``folder/params.yaml``: the tiny preset with dotted-key ``overrides``."""
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(set_dotted(yaml.safe_load(TINY.read_text()), overrides), sort_keys=False))
    return path


def params(**overrides):
    # The synthetic volumes are brains without a skull: their foreground is the brain.
    base = {
        "data": {"source": "ixi", "registration": False},
        "prepare": {"size": 24, "slices": {"train": 10, "val": 3, "test": 4}, "brain_mask": "head"},
    }
    return load_params(TINY, set_dotted(base, overrides))


def splits(out):
    return {s: load_slices(out / f"{s}.npz", allow_empty=True) for s in ("train", "val", "test")}
