"""Intensity-based registration of one volume onto another's grid (IXI: T1 onto the PD grid).

IXI's PD and T2 come from one dual-echo acquisition and share a grid; T1 is a separate, usually
sagittal, acquisition of the same session with its own resolution. Before PD and T1 slices can be
paired, T1 (the *moving* image) is brought onto the PD grid (the *fixed* image):

1. start from the scanner's own world coordinates (both series of one session share the scanner
   frame, so the headers are already close: only head motion between the series is left);
2. rigid (``Euler3DTransform``: 3 rotations, 3 translations);
3. affine (12 parameters), started from the rigid result, to absorb gradient-nonlinearity scaling
   and small shears between the sequences;
4. resample the moving volume with linear interpolation onto the fixed grid (0 outside its field
   of view).

Both stages maximise Mattes mutual information, which only asks that the joint intensity
histogram of the two modalities be sharp, not that their intensities agree (PD and T1 contrasts
differ). Each stage runs coarse to fine over a Gaussian pyramid.

Why SimpleITK and not ANTsPy: the SimpleITK wheel is small and already a dependency (no compiled
ANTs toolchain, ~20 MB instead of ~200 MB), its registration framework exposes both things
reproducibility needs — the metric's random sampling takes an explicit seed and the method's
thread count can be set to 1 — and it runs the same on every platform. With a fixed
seed and one thread, the same inputs give bit-identical outputs (DVC then sees unchanged files).

Coordinates: arrays here are indexed ``(i, j, k)`` with a nibabel (RAS+) affine; ITK works in LPS+.
:func:`to_sitk` converts; :meth:`Registration.map_points` maps RAS points for callers and tests.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class RegistrationSettings:
    """Knobs of the registration; the defaults suit 1–4 mm brain MRI."""

    #: Histogram bins of Mattes mutual information.
    bins: int = 32
    #: Fraction of a pyramid level's fixed-image voxels sampled by the metric (random, seeded),
    #: but at least ``min_samples`` and at most ``max_samples`` per level.
    sampling: float = 0.10
    min_samples: int = 20_000
    max_samples: int = 200_000
    #: Pyramid levels: shrink factors, coarse to fine; a level is used only if the smallest axis
    #: still has ``min_level_voxels`` voxels at that shrink.
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    min_level_voxels: int = 24
    #: Iterations per level of the regular-step gradient descent.
    iterations: int = 200
    #: Largest step, in units of the optimiser scales (~ mm for translations), and the smallest.
    max_step: float = 2.0
    min_step: float = 1e-3
    relaxation: float = 0.7
    #: Seed of the metric's random sampling (same seed, same result).
    seed: int = 0
    threads: int = 1


@dataclass
class Registration:
    """Result: the moving volume on the fixed grid plus the transform that put it there."""

    data: np.ndarray  #: moving volume resampled on the fixed grid, float32
    transform: object  #: SimpleITK AffineTransform, fixed (LPS mm) -> moving (LPS mm)
    info: dict = field(default_factory=dict)

    def map_points(self, points_ras: np.ndarray) -> np.ndarray:
        """Map world points (N, 3) in RAS mm of the fixed image to the moving image's world."""
        pts = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3) * np.array([-1.0, -1.0, 1.0])
        out = np.array([self.transform.TransformPoint(tuple(p)) for p in pts])
        return out * np.array([-1.0, -1.0, 1.0])


def to_sitk(data: np.ndarray, affine: np.ndarray):
    """A SimpleITK image with the geometry of ``(data, affine)`` (nibabel RAS+ affine)."""
    import SimpleITK as sitk

    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    rot = lps[:3, :3]
    spacing = np.linalg.norm(rot, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("affine has a zero-length voxel axis")
    direction = rot / spacing
    # ITK needs an orthonormal direction matrix: use the nearest rotation (headers with a tiny
    # shear from rounding are common; a real shear is not representable on an ITK grid).
    u, _, vt = np.linalg.svd(direction)
    direction = u @ vt
    # sitk arrays are (k, j, i); ours are (i, j, k).
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in direction.ravel()])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    return img


def from_sitk(img) -> np.ndarray:
    import SimpleITK as sitk

    return np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))


def same_grid(shape_a, affine_a, shape_b, affine_b, atol_mm: float = 1e-3) -> bool:
    """Whether two volumes sample the same voxel centres (shape and affine agree)."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, rtol=0.0, atol=atol_mm)


def _pyramid(shape, settings: RegistrationSettings) -> tuple[list[int], list[float]]:
    smallest = min(shape)
    factors = [f for f in settings.shrink_factors if smallest / f >= settings.min_level_voxels] or [1]
    if factors[-1] != 1:
        factors.append(1)
    # Smoothing in voxels of the full-resolution grid: half the shrink factor (0 at full res).
    sigmas = [f / 2.0 if f > 1 else 0.0 for f in factors]
    return factors, sigmas


def _method(fixed, settings: RegistrationSettings):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    factors, sigmas = _pyramid(fixed.GetSize(), settings)
    # Per level: ``sampling`` of its voxels, but at least ``min_samples`` (coarse levels of small
    # volumes) and at most ``max_samples`` (IXI at 1 mm has ~8 M voxels at full resolution).
    n_full = float(np.prod(fixed.GetSize()))
    fractions = []
    for f in factors:
        n_level = n_full / f**3
        samples = min(n_level, max(settings.min_samples, min(settings.max_samples, settings.sampling * n_level)))
        fractions.append(float(samples / n_level))
    # Seed 0 would mean "wall clock" to SimpleITK: keep it positive.
    reg.SetMetricSamplingPercentagePerLevel(fractions, int(settings.seed) % (2**31 - 2) + 1)
    reg.SetInterpolator(sitk.sitkLinear)
    # Image gradients by central differences at the sampled points only, instead of a gradient
    # image of the whole volume at every level: half the time on IXI-sized volumes, same result.
    reg.MetricUseFixedImageGradientFilterOff()
    reg.MetricUseMovingImageGradientFilterOff()
    # Regular-step descent: the step shrinks by ``relaxation`` whenever the gradient turns back,
    # and the stage ends once it is below ``min_step`` (a plain gradient descent with a
    # convergence window stopped too early on the sampled metric in our tests).
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings.max_step,
        minStep=settings.min_step,
        numberOfIterations=settings.iterations,
        relaxationFactor=settings.relaxation,
        gradientMagnitudeTolerance=1e-8,
    )
    # Rotations, translations and affine entries on one footing: the displacement (mm) a unit
    # change of each parameter causes at the image's extent.
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(factors)
    reg.SetSmoothingSigmasPerLevel(sigmas)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetNumberOfThreads(settings.threads)
    return reg


def register(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    settings: RegistrationSettings | None = None,
) -> Registration:
    """Rigid then affine registration of ``moving`` onto ``fixed``; returns ``moving`` on the fixed grid.

    Both arrays are 3-D with nibabel affines. Deterministic for a given ``settings.seed`` (one
    thread, seeded metric sampling).
    """

    settings = settings or RegistrationSettings()
    t0 = time.perf_counter()
    with _threads(settings.threads):
        return _register(fixed, fixed_affine, moving, moving_affine, settings, t0)


@contextlib.contextmanager
def _threads(n: int):
    """ITK's metrics take their thread count from the global default, not from the method's own
    setting: the per-thread partial sums are added in an order that varies between runs, so only
    one thread gives bit-identical results. Restored afterwards."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _register(fixed, fixed_affine, moving, moving_affine, settings: RegistrationSettings, t0: float) -> Registration:
    import SimpleITK as sitk

    fixed_img = to_sitk(fixed, fixed_affine)
    moving_img = to_sitk(moving, moving_affine)
    centre = fixed_img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed_img.GetSize()])

    # Stage 1: rigid, from the header alignment (identity in world coordinates), rotating about
    # the centre of the fixed field of view.
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    reg = _method(fixed_img, settings)
    reg.SetInitialTransform(rigid, inPlace=True)
    reg.Execute(fixed_img, moving_img)
    rigid_metric = reg.GetMetricValue()
    rigid_iters = reg.GetOptimizerIteration()

    # Stage 2: affine, started from the rigid solution.
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre)
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    reg = _method(fixed_img, settings)
    reg.SetInitialTransform(affine, inPlace=True)
    reg.Execute(fixed_img, moving_img)

    resampled = sitk.Resample(moving_img, fixed_img, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    info = {
        "method": "SimpleITK rigid (Euler3D) then affine, Mattes MI",
        "rigid_metric": float(rigid_metric),
        "rigid_iterations": int(rigid_iters),
        "affine_metric": float(reg.GetMetricValue()),
        "affine_iterations": int(reg.GetOptimizerIteration()),
        "affine_matrix_lps": [float(v) for v in affine.GetMatrix()],
        "affine_translation_lps_mm": [float(v) for v in affine.GetTranslation()],
        "affine_center_lps_mm": [float(v) for v in affine.GetCenter()],
        "pyramid_shrink_factors": _pyramid(fixed_img.GetSize(), settings)[0],
        "seed": settings.seed,
    }
    log.debug("registration %.1f s: %s", time.perf_counter() - t0, info)
    return Registration(data=from_sitk(resampled).astype(np.float32), transform=affine, info=info)


def apply_registration(
    moving: np.ndarray, moving_affine: np.ndarray, fixed_shape, fixed_affine, info: dict
) -> np.ndarray:
    """``moving`` on the fixed grid through the affine transform recorded in ``info`` by
    :func:`register` (linear interpolation, 0 outside): the same array ``register`` returned."""
    import SimpleITK as sitk

    tx = sitk.AffineTransform(3)
    tx.SetCenter(info["affine_center_lps_mm"])
    tx.SetMatrix(info["affine_matrix_lps"])
    tx.SetTranslation(info["affine_translation_lps_mm"])
    ref = to_sitk(np.zeros(fixed_shape, np.float32), fixed_affine)
    out = sitk.Resample(to_sitk(moving, moving_affine), ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return from_sitk(out).astype(np.float32)
