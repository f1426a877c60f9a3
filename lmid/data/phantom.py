"""The embedded default data: simulated multi-contrast brains, BrainWeb-style, in the IXI layout.

Anatomy. The MNI152 2009 (nonlinear symmetric) template and its grey/white-matter probability
maps ship inside the nilearn wheel, so nothing is downloaded. The brain mask B is nilearn's
(template > 0.2; the template is skull-stripped, so every simulated image is a skull-stripped
brain). Per voxel the tissue fractions are p_GM, p_WM and p_CSF = clip(B − p_GM − p_WM, 0, 1);
the background fraction is 1 − B.

Resampling. The 1 mm maps are blurred once with a Gaussian whose variance is that of a box of
``voxel_mm`` minus that of the template's own 1 mm box, σ² = (v² − 1)/12 voxels², so a coarser
voxel holds the average of the tissue it covers (partial volume), then sampled trilinearly at the
subject's warped voxel centres. The output grid is axis-aligned RAS+ (axis 0 → right, 1 → anterior,
2 → superior; axial planes are ``[:, :, k]``) in MNI millimetres, the same for every subject and
modality, with a margin that holds the largest deformation the parameters allow.

Per subject s (all randomness from ``params.seed`` and the subject index through
``numpy.random.SeedSequence`` spawn keys, so subject s is the same whatever ``n_subjects`` is):

* geometry, pulled back from subject space x to template space y:
  y = c + diag(1/σ)·Rᵀ·(x − c) + u(x): the template scaled per axis by σ_a ∈ 1 ± ``scale``,
  rotated by R (angles uniform in ±``rotation_deg`` about each axis) about the brain centre c,
  and warped by u, a cubic B-spline displacement with knots ``deformation_smoothness_mm`` apart
  whose components have RMS ``deformation_mm``. The tissue maps are warped before the signal
  equations, so the modalities and the label of a subject are co-registered by construction.
* tissue parameters PD, T1, T2, T2* × (1 + ``tissue_jitter``·N(0, 1)), shared by the modalities;
* per modality: TR, TE, flip × (1 + ``sequence_jitter``·N(0, 1)).

Signal (partial volume mixes the tissue SIGNALS, not their parameters):
I(x) = Σ_k p_k(x)·S_k with S_k the signal equation of tissue k:
spin echo S = PD·(1 − e^(−TR/T1))·e^(−TE/T2); spoiled gradient echo
S = PD·sin α·(1 − E1)/(1 − cos α·E1)·e^(−TE/T2*), E1 = e^(−TR/T1).
Then a multiplicative bias field b(x) = exp(``bias_strength``/2 · g(x)), g a smooth B-spline field
(knots 80 mm apart) scaled to |g| ≤ 1, one per image; then Rician noise |I·b + σ(n₁ + i·n₂)| with
σ = mean(I·b over the brain) / ``snr`` (SNR relative to the image's mean brain signal, the same
definition for every modality; the background holds the Rayleigh noise of a real magnitude image).

Storage. Like scanner data: int16 (as IXI distributes its volumes), scaled per image so the mean
brain intensity is 1000 (a scanner's automatic gain; absolute intensities carry no meaning, every
consumer must normalise). The quantisation step is 1 against a noise σ of 1000/snr = 25, so
nothing is lost, and the files are half the size of float32. Labels are uint8: 0 background,
1 CSF, 2 GM, 3 WM, the argmax of (1 − B, p_CSF, p_GM, p_WM) after the warp (0 wherever B < ½).
Files go through :func:`lmid.io.save_volume` (atomic, gzip with mtime 0): the same parameters give
byte-identical files. ``phantom.json`` (written last) records the physics and every subject's
draws; it is the step's declared output.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from lmid.errors import InputFileError, ParamsError
from lmid.io import replaced_folder, save_volume, write_json
from lmid.progress import progress_disabled

log = logging.getLogger(__name__)

TISSUES = ("csf", "gm", "wm")
LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3}
#: ``IXI002-Guys-0828-T1.nii.gz`` and the label volume ``IXI002-Guys-0828-label.nii.gz``.
IXI_NAME = re.compile(r"^IXI(?P<nnn>\d{3})-(?P<site>[A-Za-z]+)-(?P<mmmm>\d{4})-(?P<kind>[A-Za-z0-9]+)\.nii\.gz$")

# Keeps the phantom's random streams apart from any other step seeded from the same params.seed.
_STREAM_TAG = 0x5048414E  # "PHAN"
_HEAD_STREAM = 0x48454144  # "HEAD"
#: Mean brain intensity of a stored image (scanner-like units).
TARGET_MEAN = 1000.0
#: Knot spacing of the bias field: a slowly varying receive-coil profile, a few knots per head.
BIAS_KNOT_MM = 80.0
# Displacements larger than this many RMS are practically never drawn (used for the grid margin).
_DEFORMATION_TAILS = 4.0
#: The head (``simulate.head``): shells outward from the skull's inner surface, in mm from it, and
#: the tissue of each (``simulate.head_tissues``, or ``csf`` from ``simulate.tissues``). Adult
#: calvaria are 6-7 mm thick with a fatty diploe between two cortical tables; the scalp adds
#: subcutaneous fat and skin/galea. The inner surface is the brain mask closed with a 4 mm ball
#: (sulci do not reach the skull), and the CSF between it and the brain is CSF too.
HEAD_SHELLS = (
    ("csf", 0.0, 1.5),
    ("bone", 1.5, 3.0),
    ("marrow", 3.0, 5.0),
    ("bone", 5.0, 6.5),
    ("fat", 6.5, 10.0),
    ("skin", 10.0, 12.5),
)
HEAD_MM = HEAD_SHELLS[-1][2]
HEAD_TISSUES = ("bone", "marrow", "fat", "skin")
#: Radius (mm) of the closing that turns the brain mask into the skull's inner surface.
_HULL_CLOSING_MM = 4


# ------------------------------------------------------------------------------ signal equations
def spin_echo(pd, t1_ms, t2_ms, tr_ms, te_ms):
    """S = PD·(1 − e^(−TR/T1))·e^(−TE/T2) (90° excitation, full recovery between echoes ignored)."""
    return pd * (1.0 - np.exp(-tr_ms / t1_ms)) * np.exp(-te_ms / t2_ms)


def spoiled_gradient_echo(pd, t1_ms, t2s_ms, tr_ms, te_ms, flip_deg):
    """Steady-state spoiled GRE: S = PD·sin α·(1 − E1)/(1 − cos α·E1)·e^(−TE/T2*), E1 = e^(−TR/T1)."""
    alpha = np.deg2rad(flip_deg)
    e1 = np.exp(-tr_ms / t1_ms)
    return pd * np.sin(alpha) * (1.0 - e1) / (1.0 - np.cos(alpha) * e1) * np.exp(-te_ms / t2s_ms)


def tissue_signal(sequence: dict, tissue: dict) -> float:
    """Signal of one pure tissue (``pd``, ``t1_ms``, ``t2_ms``, ``t2s_ms``) under one sequence
    (``kind``, ``tr_ms``, ``te_ms``, ``flip_deg``)."""
    if sequence["kind"] == "spin_echo":
        return float(spin_echo(tissue["pd"], tissue["t1_ms"], tissue["t2_ms"], sequence["tr_ms"], sequence["te_ms"]))
    if sequence["kind"] == "spoiled_gradient_echo":
        return float(
            spoiled_gradient_echo(
                tissue["pd"],
                tissue["t1_ms"],
                tissue["t2s_ms"],
                sequence["tr_ms"],
                sequence["te_ms"],
                sequence["flip_deg"],
            )
        )
    raise ValueError(f"unknown sequence kind {sequence['kind']!r}")


# ------------------------------------------------------------------------------------- template
class Template:
    """The template's tissue maps, blurred for one voxel size and cropped to the brain.

    ``brain``, ``gm``, ``wm``: float32 (B, p_GM, p_WM) on the template's 1 mm grid; ``origin``: world
    position (mm) of voxel (0, 0, 0) of the crop; ``lo``/``hi``: world bounding box of the brain;
    ``centre``: its centre c.
    """

    def __init__(self, brain, gm, wm, origin, lo, hi, source, shells=None):
        self.brain, self.gm, self.wm = brain, gm, wm
        self.origin, self.lo, self.hi = origin, lo, hi
        self.centre = (lo + hi) / 2.0
        self.source = source
        #: With a head: tissue -> fraction outside the brain (``csf``, ``bone``, ...), else empty.
        self.shells: dict[str, np.ndarray] = shells or {}


def head_shells(brain: np.ndarray) -> dict[str, np.ndarray]:
    """Fractions (1 mm grid) of the tissues of :data:`HEAD_SHELLS` around a binary brain mask.

    Each shell is the set of voxels whose distance from the skull's inner surface falls in its
    range, with a one-voxel linear ramp at both ends (so a blurred shell has partial volume on
    both sides). The fractions and the brain are disjoint and sum to at most 1.
    """
    r = _HULL_CLOSING_MM
    ball = np.linalg.norm(np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1], axis=0) <= r
    inside = brain > 0.5
    padded = np.pad(inside, r + 1)
    hull = (
        ndimage.binary_fill_holes(ndimage.binary_closing(padded, structure=ball))[
            tuple(slice(r + 1, -(r + 1)) for _ in range(3))
        ]
        | inside
    )
    # Distance (mm) of a voxel centre outside the hull from the hull's surface (half a voxel in).
    depth = np.maximum(ndimage.distance_transform_edt(~hull) - 0.5, 0.0)
    out: dict[str, np.ndarray] = {}
    for tissue, a, b in HEAD_SHELLS:
        frac = np.clip(depth - a + 0.5, 0.0, 1.0) - np.clip(depth - b + 0.5, 0.0, 1.0)
        frac[hull] = 0.0
        out[tissue] = out.get(tissue, 0.0) + frac.astype(np.float32)
    out["csf"] += (hull & ~inside).astype(np.float32)
    return out


@functools.lru_cache(maxsize=2)
def load_template(voxel_mm: float, head: bool = False) -> Template:
    """MNI152 2009 maps from the nilearn wheel (offline), anti-aliased for ``voxel_mm``; with
    ``head``, also the shells of :func:`head_shells` around the brain."""
    import nilearn
    from nilearn import datasets

    imgs = {
        "brain": datasets.load_mni152_brain_mask(resolution=1),
        "gm": datasets.load_mni152_gm_template(resolution=1),
        "wm": datasets.load_mni152_wm_template(resolution=1),
    }
    affine = imgs["brain"].affine
    for name, img in imgs.items():
        # The sampler below assumes a 1 mm, axis-aligned RAS+ grid shared by the three maps.
        if not np.allclose(img.affine, affine) or not np.allclose(affine[:3, :3], np.eye(3)):
            raise InputFileError(f"nilearn MNI152 {name} map", f"unexpected affine {img.affine.tolist()}")
    brain = np.asarray(imgs["brain"].dataobj, dtype=np.float32)
    gm = np.clip(np.asarray(imgs["gm"].dataobj, dtype=np.float32), 0, 1) * brain
    wm = np.clip(np.asarray(imgs["wm"].dataobj, dtype=np.float32), 0, 1) * brain

    # Variance of a v-mm box minus that of the template's 1 mm box (voxels of 1 mm).
    sigma = math.sqrt(max(voxel_mm**2 - 1.0, 0.0) / 12.0)
    inside = np.argwhere(brain > 0)
    pad = int(math.ceil(4 * sigma)) + 2 + (int(math.ceil(HEAD_MM)) + 1 if head else 0)
    start, stop = inside.min(0) - pad, inside.max(0) + 1 + pad
    if not head:  # within the template's grid (the brain maps are zero beyond it anyway)
        start, stop = np.maximum(start, 0), np.minimum(stop, brain.shape)
    # A head reaches past the template's grid (the brain touches its lower face): zero padding.
    before, after = np.maximum(-start, 0), np.maximum(stop - np.asarray(brain.shape), 0)
    crop = tuple(slice(a + p, b + p) for a, b, p in zip(start, stop, before))
    padded = lambda arr: np.pad(arr, list(zip(before, after)))  # noqa: E731
    raw = {"brain": brain, "gm": gm, "wm": wm}
    raw = {k: np.ascontiguousarray(padded(v)[crop]) for k, v in raw.items()}
    shells = head_shells(raw["brain"]) if head else {}

    def blur(arr):
        if sigma > 0:
            arr = ndimage.gaussian_filter(arr, sigma, mode="constant", cval=0.0, truncate=4.0)
        return arr.astype(np.float32, copy=False)

    to_world = lambda idx: affine[:3, :3] @ np.asarray(idx, float) + affine[:3, 3]  # noqa: E731
    lo, hi = to_world(inside.min(0)), to_world(inside.max(0))
    source = f"MNI152 2009 nonlinear symmetric template, GM/WM maps and brain mask (nilearn {nilearn.__version__})"
    return Template(
        blur(raw["brain"]),
        blur(raw["gm"]),
        blur(raw["wm"]),
        origin=to_world(start),
        lo=lo,
        hi=hi,
        source=source,
        shells={k: blur(v) for k, v in shells.items()},
    )


# ---------------------------------------------------------------------------------------- grid
def output_grid(template: Template, sim) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS+ affine of the whole-brain output grid shared by all subjects.

    The margin holds the largest warp the parameters allow: the brain's surface points are moved
    by every extreme combination of rotation and scale (the farthest reach along each axis), plus
    a displacement of several RMS, plus 2 mm of background.
    """
    v = float(sim.voxel_mm)
    half = (template.hi - template.lo) / 2.0
    overshoot = _linear_overshoot(template, sim.rotation_deg, sim.scale)
    margin = overshoot + _DEFORMATION_TAILS * sim.deformation_mm + 2.0 + (HEAD_MM if sim.head else 0.0)
    shape = tuple(int(math.ceil(2 * (h + m) / v)) + 1 for h, m in zip(half, margin))
    affine = np.eye(4)
    affine[:3, :3] *= v
    affine[:3, 3] = template.centre - v * (np.asarray(shape) - 1) / 2.0
    return shape, affine


def _linear_overshoot(template: Template, rotation_deg: float, scale: float) -> np.ndarray:
    """Per axis, how far (mm) a rotated and scaled brain can reach beyond the template's box."""
    inside = template.brain > 0.5
    surface = np.argwhere(inside & ~ndimage.binary_erosion(inside))[::5].astype(float)
    pts = surface + template.origin - template.centre  # world, relative to c (1 mm axis-aligned)
    half = (template.hi - template.lo) / 2.0
    levels = (-1.0, 0.0, 1.0)
    reach = np.zeros(3)
    # Forward map of the template into subject space: x − c = R·diag(σ)·(y − c); the extremes of
    # a small rotation/scale box lie on its corners and face centres.
    for ax in levels:
        for ay in levels:
            for az in levels:
                r = _rotation(np.array([ax, ay, az]) * rotation_deg)
                for s in (1.0 - scale, 1.0 + scale):
                    reach = np.maximum(reach, np.abs(pts @ (r * s).T).max(0))
    return np.maximum(reach - half, 0.0)


def _kept_planes(n_axial: int, axial_planes: int) -> slice:
    """The ``axial_planes`` planes around the middle of the grid (all when 0 or too many)."""
    if axial_planes <= 0 or axial_planes >= n_axial:
        return slice(0, n_axial)
    start = (n_axial - axial_planes) // 2
    return slice(start, start + axial_planes)


# ---------------------------------------------------------------------------- smooth fields
def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    a = np.abs(t)
    return np.where(a < 1, 2.0 / 3.0 - a**2 + a**3 / 2.0, np.where(a < 2, (2.0 - a) ** 3 / 6.0, 0.0))


def bspline_matrix(n_out: int, knot_spacing_vox: float) -> np.ndarray:
    """(n_out, n_knots) weights of a cubic B-spline with knots every ``knot_spacing_vox`` voxels.

    Voxel 0 sits on knot 1, so every voxel has its four supporting knots. The weights of a row are
    non-negative and sum to 1: the field is a local weighted average of the knot values.
    """
    t = 1.0 + np.arange(n_out) / knot_spacing_vox
    n_knots = int(math.floor(t[-1])) + 3
    return _cubic_bspline(t[:, None] - np.arange(n_knots)[None, :])


def bspline_field(coef: np.ndarray, mats: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Evaluate a separable tensor-product spline: field[i,j,k] = Σ K0[i,a]·K1[j,b]·K2[k,c]·coef[a,b,c]."""
    out = np.tensordot(mats[0], coef, axes=(1, 0))  # (i, b, c)
    out = np.tensordot(out, mats[1], axes=(1, 1))  # (i, c, j)
    out = np.tensordot(out, mats[2], axes=(1, 1))  # (i, j, k)
    return out


def _knot_count(mats) -> tuple[int, int, int]:
    return tuple(m.shape[1] for m in mats)


# ------------------------------------------------------------------------------------ subjects
def subject_seed(seed: int, index: int, *keys: int) -> np.random.SeedSequence:
    """Seed of subject ``index`` (and of one of its sub-streams): a spawn key under ``seed``."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(_STREAM_TAG, int(index), *keys))


def _modality_key(name: str) -> int:
    # Stable across runs and Python versions (unlike hash()), and independent of the modality order.
    return zlib.crc32(name.encode("utf-8"))


def ixi_id(index: int, site: str, number: int) -> str:
    """``IXI{nnn}-{site}-{mmmm}``: nnn counts from 002 like IXI."""
    return f"IXI{index + 2:03d}-{site}-{number:04d}"


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _jitter(rng: np.random.Generator, value: float, rel_sd: float) -> float:
    # Multiplicative, truncated so a parameter never flips sign or halves.
    return float(value * np.clip(1.0 + rel_sd * rng.standard_normal(), 0.5, 1.5))


def simulate_subject(params, index: int) -> dict:
    """Simulate subject ``index``: images per modality (int16), label (uint8), affine, and facts.

    Deterministic in (``params.seed``, ``index``, ``params.simulate``).
    """
    sim = params.simulate
    v = float(sim.voxel_mm)
    tpl = load_template(v, sim.head)
    shape, affine = output_grid(tpl, sim)
    keep = _kept_planes(shape[2], sim.axial_planes)
    rng = np.random.default_rng(subject_seed(params.seed, index))

    site = sim.sites[index % len(sim.sites)]
    number = int(rng.integers(100, 10000))
    angles = rng.uniform(-sim.rotation_deg, sim.rotation_deg, size=3)
    scales = 1.0 + rng.uniform(-sim.scale, sim.scale, size=3)
    tissues = {}
    for name in TISSUES:
        base = sim.tissues[name]
        tissues[name] = {
            k: _jitter(rng, getattr(base, k), sim.tissue_jitter) for k in ("pd", "t1_ms", "t2_ms", "t2s_ms")
        }
    head_tissues = {}
    if sim.head:  # a stream of its own: the brain's draws are the same with or without a head
        hrng = np.random.default_rng(subject_seed(params.seed, index, _HEAD_STREAM))
        head_tissues = {
            name: {
                k: _jitter(hrng, getattr(sim.head_tissues[name], k), sim.tissue_jitter)
                for k in ("pd", "t1_ms", "t2_ms", "t2s_ms")
            }
            for name in HEAD_TISSUES
        }

    # Displacement u (mm) on the whole grid's knot lattice, evaluated on the kept planes only, so a
    # subject's anatomy does not depend on axial_planes. Knot values are scaled so each component
    # has RMS deformation_mm: Var u(x) = σ_c²·Π_axes Σ_j K[x, j]², averaged over the grid.
    mats = [bspline_matrix(n, sim.deformation_smoothness_mm / v) for n in shape]
    gain = math.prod(float(np.mean(np.sum(m**2, axis=1))) for m in mats)
    sigma_c = sim.deformation_mm / math.sqrt(gain)
    coef = rng.standard_normal((3, *_knot_count(mats))) * sigma_c
    mats[2] = mats[2][keep]
    disp = [bspline_field(coef[a], mats) for a in range(3)]

    # Pull back every kept output voxel to template voxel indices: y = c + diag(1/σ)Rᵀ(x − c) + u(x).
    m = np.diag(1.0 / scales) @ _rotation(angles).T
    axes = [affine[a, a] * np.arange(n) + affine[a, 3] - tpl.centre[a] for a, n in enumerate(shape)]
    axes[2] = axes[2][keep]
    coords = np.empty((3, shape[0], shape[1], len(axes[2])), dtype=np.float64)
    for a in range(3):
        coords[a] = (
            (tpl.centre[a] - tpl.origin[a])
            + disp[a]
            + m[a, 0] * axes[0][:, None, None]
            + m[a, 1] * axes[1][None, :, None]
            + m[a, 2] * axes[2][None, None, :]
        )
    del disp

    def sample(arr, coords=coords):
        return ndimage.map_coordinates(
            arr, coords, order=1, mode="constant", cval=0.0, prefilter=False, output=np.float32
        )

    brain = np.clip(sample(tpl.brain), 0, 1)
    gm = np.clip(sample(tpl.gm), 0, 1)
    wm = np.clip(sample(tpl.wm), 0, 1)
    shells = {k: np.clip(sample(arr), 0, 1) for k, arr in tpl.shells.items()}
    del coords
    csf = np.clip(brain - gm - wm, 0, 1)
    label = np.argmax(np.stack([1.0 - brain, csf, gm, wm]), axis=0).astype(np.uint8)
    in_brain = label > 0

    out_affine = affine.copy()
    out_affine[:3, 3] += affine[:3, 2] * keep.start
    images, facts = {}, {}
    for mod, seq in sim.sequences.items():
        mrng = np.random.default_rng(subject_seed(params.seed, index, _modality_key(mod)))
        s = {
            "kind": seq.kind,
            "tr_ms": _jitter(mrng, seq.tr_ms, sim.sequence_jitter),
            "te_ms": _jitter(mrng, seq.te_ms, sim.sequence_jitter),
            "flip_deg": min(_jitter(mrng, seq.flip_deg, sim.sequence_jitter), 180.0),
        }
        if seq.kind == "spin_echo":
            del s["flip_deg"]  # drawn (keeps the stream's order) but a spin echo does not use it
        signal = {k: tissue_signal(s, tissues[k]) for k in TISSUES}
        # Partial volume: mix the tissue signals by their fractions.
        img = signal["csf"] * csf + signal["gm"] * gm + signal["wm"] * wm
        for tissue, frac in shells.items():
            img += (signal["csf"] if tissue == "csf" else tissue_signal(s, head_tissues[tissue])) * frac

        # Bias: knot values uniform in ±1, normalised by the largest value the spline takes on the
        # knots (computed on the knot lattice, so it is the same whatever axial_planes is).
        bmats = [bspline_matrix(n, BIAS_KNOT_MM / v) for n in shape]
        bcoef = mrng.uniform(-1.0, 1.0, size=_knot_count(bmats))
        at_knots = bcoef
        for ax in range(3):
            at_knots = ndimage.convolve1d(at_knots, np.array([1.0, 4.0, 1.0]) / 6.0, axis=ax, mode="constant")
        inner = tuple(slice(1, k - 2) for k in _knot_count(bmats))  # knots inside the grid
        bcoef = bcoef / max(float(np.abs(at_knots[inner]).max()), 1e-12)
        bmats[2] = bmats[2][keep]
        bias = np.exp(0.5 * sim.bias_strength * np.clip(bspline_field(bcoef, bmats), -1.0, 1.0))
        img = (img * bias).astype(np.float32)

        # Rician noise at the requested SNR relative to this image's mean brain signal.
        mean_brain = float(img[in_brain].mean())
        sigma = mean_brain / sim.snr
        real = img + sigma * mrng.standard_normal(img.shape, dtype=np.float32)
        imag = sigma * mrng.standard_normal(img.shape, dtype=np.float32)
        noisy = np.sqrt(real * real + imag * imag)
        scale_to = TARGET_MEAN / mean_brain
        stored = np.clip(np.rint(noisy * scale_to), 0, np.iinfo(np.int16).max).astype(np.int16)
        images[mod] = stored
        facts[mod] = {
            "sequence": s,
            "tissue_signal": signal,
            "noise_sigma": sigma * scale_to,
            "intensity_scale": scale_to,
            "mean_intensity": {
                k: float(stored[label == LABELS[k]].mean()) if np.any(label == LABELS[k]) else None for k in TISSUES
            },
        }
    return {
        "id": ixi_id(index, site, number),
        "index": index,
        "site": site,
        "affine": out_affine,
        "images": images,
        "label": label,
        "facts": {
            "rotation_deg": angles.tolist(),
            "scale": scales.tolist(),
            "tissues": tissues,
            **({"head_tissues": head_tissues} if sim.head else {}),
            "modalities": facts,
            "label_voxels": {k: int(np.sum(label == LABELS[k])) for k in LABELS},
        },
    }


# -------------------------------------------------------------------------------------- generate
def _check(params) -> None:
    sim = params.simulate
    for mod in sim.sequences:
        if not re.fullmatch(r"[A-Za-z0-9]+", mod) or mod.lower() == "label":
            raise ParamsError(f"simulate.sequences: modality name {mod!r} must be letters/digits and not 'label'")
    for site in sim.sites:
        if not re.fullmatch(r"[A-Za-z]+", site):
            raise ParamsError(f"simulate.sites: {site!r} must be letters only (it is part of IXI file names)")
    missing = [t for t in TISSUES if t not in sim.tissues]
    if missing:
        raise ParamsError(f"simulate.tissues: missing {missing}")
    if params.data.source == "simulated":
        wanted = [params.data.source_modality, params.data.target_modality, *params.data.extra_modalities]
        absent = [m for m in wanted if m not in sim.sequences]
        if absent:
            raise ParamsError(
                f"simulate.sequences: no sequence for modalities {absent} that 'data' asks for; "
                f"has {sorted(sim.sequences)}"
            )


def generate(params, out_dir: Path, protocol: str = "main") -> dict:
    """Simulate ``params.simulate.n_subjects`` subjects into ``out_dir`` in the IXI layout.

    Writes ``IXI{nnn}-{site}-{mmmm}-{MOD}.nii.gz`` per modality of ``simulate.sequences`` and
    ``...-label.nii.gz`` per subject, then ``phantom.json``. Returns a summary (also timing, which
    the JSON leaves out so that it is byte-identical between runs). ``protocol`` is recorded
    there: ``unseen`` when ``params`` is ``Params.unseen_simulation()``.
    """
    _check(params)
    # Built in a staging folder that replaces out_dir only when complete: an interrupted run (a
    # new snr, Ctrl-C) never leaves volumes of two settings side by side under an old phantom.json.
    with replaced_folder(out_dir, lambda name: name.endswith(".nii.gz") or name == "phantom.json") as stage:
        summary = _generate_into(params, stage, protocol)
    return {**summary, "out_dir": str(out_dir)}


def _generate_into(params, out_dir: Path, protocol: str) -> dict:
    from tqdm import tqdm

    sim = params.simulate
    t0 = time.perf_counter()
    tpl = load_template(float(sim.voxel_mm), sim.head)
    shape, affine = output_grid(tpl, sim)
    keep = _kept_planes(shape[2], sim.axial_planes)

    subjects, written = [], set()
    sums = {mod: {k: [] for k in TISSUES} for mod in sim.sequences}
    for index in tqdm(range(sim.n_subjects), desc="generate", unit="subject", disable=progress_disabled()):
        subj = simulate_subject(params, index)
        files = {}
        for mod, img in subj["images"].items():
            files[mod] = f"{subj['id']}-{mod}.nii.gz"
            save_volume(out_dir / files[mod], img, subj["affine"])
        files["label"] = f"{subj['id']}-label.nii.gz"
        save_volume(out_dir / files["label"], subj["label"], subj["affine"])
        written.update(files.values())
        for mod, f in subj["facts"]["modalities"].items():
            for k, value in f["mean_intensity"].items():
                if value is not None:
                    sums[mod][k].append(value)
        subjects.append({"id": subj["id"], "index": index, "site": subj["site"], "files": files, **subj["facts"]})

    out_shape = [shape[0], shape[1], keep.stop - keep.start]
    out_affine = affine.copy()
    out_affine[:3, 3] += affine[:3, 2] * keep.start
    mean_intensity = {mod: {k: float(np.mean(v)) if v else None for k, v in d.items()} for mod, d in sums.items()}
    record = {
        "generator": "lmid.data.phantom",
        "protocol": protocol,
        "seed": params.seed,
        "simulate": sim.model_dump(mode="json"),
        "template": tpl.source,
        "grid": {
            "shape": out_shape,
            "affine": out_affine.tolist(),
            "voxel_mm": float(sim.voxel_mm),
            "axes": "RAS+ (axis 2 is superior: axial planes are [:, :, k])",
        },
        "labels": LABELS,
        "physics": {
            "spin_echo": "S = PD*(1 - exp(-TR/T1))*exp(-TE/T2)",
            "spoiled_gradient_echo": "S = PD*sin(a)*(1 - E1)/(1 - cos(a)*E1)*exp(-TE/T2s), E1 = exp(-TR/T1)",
            "partial_volume": "I = sum_k p_k * S_k over CSF, GM, WM (signals mixed, not parameters)",
            "bias": f"I *= exp(bias_strength/2 * g), g a cubic B-spline field (knots {BIAS_KNOT_MM:g} mm), |g| <= 1",
            "noise": "|I + sigma*(n1 + i*n2)|, sigma = mean(I over label > 0) / snr (Rician)",
            "storage": f"int16, scaled so the mean brain intensity is {TARGET_MEAN:g}; labels uint8",
            "geometry": "y = c + diag(1/scale) R^T (x - c) + u(x), u cubic B-spline, RMS deformation_mm per component",
            **(
                {
                    "head": "shells (tissue, from mm, to mm) outward from the brain mask closed with a "
                    f"{_HULL_CLOSING_MM} mm ball: {[list(x) for x in HEAD_SHELLS]}; the label is the brain's"
                }
                if sim.head
                else {}
            ),
        },
        "mean_intensity": mean_intensity,
        "subjects": subjects,
    }
    write_json(out_dir / "phantom.json", record)
    seconds = time.perf_counter() - t0
    log.info("generate: %d subjects, grid %s at %g mm, %.1f s", sim.n_subjects, out_shape, sim.voxel_mm, seconds)
    return {
        "n_subjects": sim.n_subjects,
        "shape": out_shape,
        "voxel_mm": float(sim.voxel_mm),
        "files": sorted(written),
        "mean_intensity": mean_intensity,
        "seconds": seconds,
    }
