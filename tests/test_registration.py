"""Registration recovers a known rigid + affine misalignment across contrasts, deterministically."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from lmid.data.registration import Registration, register, same_grid, to_sitk


def _rotation(deg_x, deg_y, deg_z):
    ax, ay, az = np.deg2rad([deg_x, deg_y, deg_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def tissue(points):
    """Tissue class (0 bg, 1 scalp, 2 CSF, 3 GM, 4 WM) at world points (N, 3) in RAS mm.

    An ellipsoidal head with a folded cortex and off-centre, unequal ventricles and blobs so no
    rotation or flip maps it onto itself.
    """
    x, y, z = points.T
    r = np.sqrt((x / 46) ** 2 + (y / 56) ** 2 + (z / 42) ** 2)
    theta, phi = np.arctan2(y, x), np.arctan2(z, np.hypot(x, y))
    folded = r * (1 + 0.06 * np.sin(5 * theta) * np.cos(3 * phi))
    lab = np.zeros(len(points), np.int8)
    lab[r < 1.0] = 1
    lab[r < 0.9] = 2
    lab[folded < 0.82] = 3
    lab[folded < 0.62] = 4

    def blob(cx, cy, cz, ax, ay, az):
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 < 1

    lab[blob(-8, 6, 4, 5, 16, 7)] = 2  # left ventricle
    lab[blob(9, 2, 2, 4, 12, 6)] = 2  # smaller right ventricle
    lab[blob(18, -25, -8, 7, 5, 6)] = 3  # grey-matter nucleus, one side only
    lab[blob(-20, 30, 14, 5, 6, 4)] = 2
    return lab


CONTRAST = {"T1": np.array([0, 0.55, 0.15, 0.5, 0.8]), "PD": np.array([0, 0.5, 1.0, 0.85, 0.7])}


def sample(shape, affine, contrast, world_map=None, seed=0):
    """Image of ``contrast`` on a grid; ``world_map`` moves the anatomy (x -> A(x))."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    pts = idx @ affine[:3, :3].T + affine[:3, 3]
    if world_map is not None:
        pts = world_map(pts)
    img = CONTRAST[contrast][tissue(pts)].reshape(shape)
    img = gaussian_filter(img, 0.8)
    rng = np.random.default_rng(seed)
    return np.abs(img + rng.normal(0, 0.02, shape) + 1j * rng.normal(0, 0.02, shape)).astype(np.float32) * 100


def _grids():
    fixed_shape, vox = (48, 48, 48), 2.5
    fixed_aff = np.diag([vox, vox, vox, 1.0])
    fixed_aff[:3, 3] = -vox * (np.array(fixed_shape) - 1) / 2
    # Moving: a sagittal-like grid with other voxel sizes and axis order (i -> A, j -> S, k -> L).
    mov_shape = (50, 46, 44)
    mov_aff = np.zeros((4, 4))
    mov_aff[:3, 0] = (0, 2.4, 0)
    mov_aff[:3, 1] = (0, 0, 2.6)
    mov_aff[:3, 2] = (-2.8, 0, 0)
    mov_aff[3, 3] = 1
    mov_aff[:3, 3] = -mov_aff[:3, :3] @ ((np.array(mov_shape) - 1) / 2)
    return fixed_shape, fixed_aff, mov_shape, mov_aff


def _known_transform():
    lin = _rotation(4.0, -3.0, 5.0) @ np.array([[1.03, 0.02, 0], [0, 0.97, -0.015], [0.01, 0, 1.02]])
    shift = np.array([3.0, -2.5, 4.0])
    return lambda p: p @ lin.T + shift


@pytest.fixture(scope="module")
def case():
    fixed_shape, fixed_aff, mov_shape, mov_aff = _grids()
    known = _known_transform()
    fixed = sample(fixed_shape, fixed_aff, "PD", seed=1)
    # The moving T1 shows the anatomy at A(x): the anatomy point y sits at A^-1(y) in its world.
    moving = sample(mov_shape, mov_aff, "T1", world_map=known, seed=2)
    return fixed, fixed_aff, moving, mov_aff, known


def _brain_points(fixed_shape, fixed_aff):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in fixed_shape], indexing="ij"), -1).reshape(-1, 3)
    pts = idx @ fixed_aff[:3, :3].T + fixed_aff[:3, 3]
    return pts[tissue(pts) >= 2]


def test_geometry_matches_nibabel():
    _, _, mov_shape, mov_aff = _grids()
    img = to_sitk(np.zeros(mov_shape, np.float32), mov_aff)
    for ijk in [(0, 0, 0), (3, 7, 11), (49, 45, 43)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        ras = mov_aff[:3, :3] @ np.array(ijk) + mov_aff[:3, 3]
        np.testing.assert_allclose(lps * [-1, -1, 1], ras, atol=1e-6)
    assert same_grid(mov_shape, mov_aff, mov_shape, mov_aff + 1e-5)
    assert not same_grid(mov_shape, mov_aff, (50, 46, 43), mov_aff)


def test_recovers_known_rigid_affine_transform(case):
    fixed, fixed_aff, moving, mov_aff, known = case
    pts = _brain_points(fixed.shape, fixed_aff)
    before = np.linalg.norm(known(pts) - pts, axis=1).mean()
    result = register(fixed, fixed_aff, moving, mov_aff)
    assert isinstance(result, Registration)
    assert result.data.shape == fixed.shape and result.data.dtype == np.float32
    # Registration gives T: fixed -> moving world; the moving image shows the anatomy of A(T(y)).
    error_mm = np.linalg.norm(known(result.map_points(pts)) - pts, axis=1)
    voxel = 2.5
    print(
        f"mean displacement before {before / voxel:.2f} voxels, after {error_mm.mean() / voxel:.3f} voxels "
        f"(max {error_mm.max() / voxel:.3f})"
    )
    assert before > 2 * voxel  # the test is not trivial
    assert error_mm.mean() < 0.5 * voxel
    assert error_mm.max() < 1.0 * voxel
    # The resampled T1 lines up with the fixed anatomy: WM is bright, CSF dark on the PD grid.
    lab = tissue(
        np.stack(np.meshgrid(*[np.arange(s) for s in fixed.shape], indexing="ij"), -1).reshape(-1, 3)
        @ fixed_aff[:3, :3].T
        + fixed_aff[:3, 3]
    ).reshape(fixed.shape)
    assert result.data[lab == 4].mean() > 2 * result.data[lab == 2].mean()


def test_deterministic(case):
    fixed, fixed_aff, moving, mov_aff, _ = case
    a = register(fixed, fixed_aff, moving, mov_aff)
    b = register(fixed, fixed_aff, moving, mov_aff)
    np.testing.assert_array_equal(a.data, b.data)
    assert a.info == b.info
