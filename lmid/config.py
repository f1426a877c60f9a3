"""The one typed loader for ``params.yaml``.

Every section of the file has a model here. Unknown keys, wrong types and out-of-range values fail
at start-up with the file name and the dotted key, e.g.
``params.yaml: diffusion.train.lr: Input should be greater than 0``.

Snakemake validates the same file against ``workflow/schemas/params.schema.json``, which is
generated from these models (``lmid schema``), so the two cannot drift apart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmid.errors import ParamsError
from lmid.registry import METHOD_NAMES

MethodName = Literal[METHOD_NAMES]
Modality = str  # "T1", "T2", "PD" for IXI; "t1", "t1ce", "t2", "flair" for BraTS

PosInt = int
Fraction = float


def _yaml_spelling(value) -> str:
    return {True: "true", False: "false"}.get(value, repr(value)) if isinstance(value, bool) else repr(value)


def _scalar_problems(annotation, value, where: str = "") -> list[str]:
    """What in ``value`` pydantic would coerce although the field does not take it: ``true`` or
    ``false`` where a number is expected (read as 1 or 0), a string where a number is expected
    (``seed: "12"``), and anything but ``true``/``false`` where a flag is expected. Items of
    tuples and lists, values of mappings and the non-null branch of optional fields are looked at
    too; nested sections check their own fields."""
    import types
    import typing

    at = f"item {where}: " if where else ""
    if annotation in (int, float):
        if isinstance(value, bool):
            return [f"{at}expected a number, got {_yaml_spelling(value)}"]
        if isinstance(value, str):
            hint = ""
            if re.fullmatch(r"[-+]?[0-9]+[eE][-+]?[0-9]+", value.strip()):
                hint = f" (YAML reads a number with an exponent but no '.' as text: write {value.strip().replace('e', '.0e', 1).replace('E', '.0E', 1)})"
            return [f"{at}expected a number, got the string {value!r}{hint}"]
        return []
    if annotation is bool:
        return [] if isinstance(value, bool) or value is None else [f"{at}expected true or false, got {value!r}"]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return []
        branches = [a for a in args if a is not type(None)]
        return _scalar_problems(branches[0], value, where) if len(branches) == 1 else []
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        if origin is tuple and args and args[-1] is not Ellipsis:
            item_types = list(args)
        else:
            item_types = [args[0] if args else typing.Any] * len(value)
        out = []
        for i, (item_type, item) in enumerate(zip(item_types, value)):
            out += _scalar_problems(item_type, item, f"{where}[{i}]" if where else str(i))
        return out
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        out = []
        for key, item in value.items():
            out += _scalar_problems(args[1], item, f"{where}[{key!r}]" if where else repr(key))
        return out
    return []


class Section(BaseModel):
    """Base for every section: unknown keys are errors, not silently ignored, and so are values
    pydantic would quietly convert: ``true`` where a number is expected (read as 1), at any depth
    (``percentiles: [false, true]``, ``snr: true``), a string where a number is expected
    (``seed: "12"``) and a number where ``true``/``false`` is expected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_coerced_scalars(cls, value, info):
        field = cls.model_fields.get(info.field_name)
        problems = _scalar_problems(field.annotation, value) if field is not None else []
        if problems:
            raise ValueError("; ".join(problems))
        return value


# ------------------------------------------------------------------------------------------ paths
def _project_root() -> Path | None:
    """The checkout this package runs from (the folder above ``lmid/`` with pyproject.toml), if any."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else None


def _contains(outer: str, inner: str) -> bool:
    """Whether folder ``inner`` is ``outer`` or lies below it (both absolute, normalised)."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_folder_param(value: str) -> str:
    """A folder named in params.yaml (``paths.*``, ``data.root``): a usable path that is never the
    filesystem root, the current folder or the project checkout, nor a folder above them.

    The workflow replaces some of these folders whole (``generate`` makes ``data.root``) and
    writes the resolved parameters into ``paths.data``, so any of these would wipe or litter the
    project. Control characters (NUL, newline, ...) make no path a shell or a YAML file keeps."""
    if not value.strip():
        raise ValueError("must name a folder, got an empty string")
    bad = sorted({f"0x{ord(c):02x}" for c in value if ord(c) < 0x20 or ord(c) == 0x7F})
    if bad:
        raise ValueError(f"{value!r} holds control character(s) {', '.join(bad)}: not a usable folder name")
    protected = {"the current folder": Path.cwd(), "the project folder": _project_root()}
    for where in {os.path.abspath(value), os.path.realpath(value)}:
        if where == os.path.abspath(os.sep):
            raise ValueError(f"{value!r} is the filesystem root: choose a folder of its own")
        for what, folder in protected.items():
            if folder is None:
                continue
            for f in {os.path.abspath(folder), os.path.realpath(folder)}:
                if _contains(where, f):
                    kind = "is" if where == f else "contains"
                    raise ValueError(f"{value!r} {kind} {what} ({f}): choose a folder of its own below it")
    return value


# --------------------------------------------------------------------------------------------- data
class DataParams(Section):
    source: Literal["simulated", "ixi", "brats"] = "simulated"
    #: Folder of volumes. For ``simulated`` the ``generate`` step writes it.
    root: str = "data/raw"
    source_modality: Modality = "PD"
    target_modality: Modality = "T1"
    #: Further modalities carried by the val/test splits (second zero-shot source, e.g. T2).
    extra_modalities: list[Modality] = ["T2"]
    #: IXI only: register T1 to the PD grid (rigid, then affine, Mattes mutual information).
    registration: bool = True
    #: IXI only: keep subjects from these sites (empty = all).
    sites: list[str] = []

    @field_validator("root")
    @classmethod
    def _usable_root(cls, value: str) -> str:
        return check_folder_param(value)

    @model_validator(mode="after")
    def _distinct_modalities(self):
        # Checked once here, so prepare and the experiment list cannot disagree about it.
        if self.source_modality.lower() == self.target_modality.lower():
            raise ValueError(f"source_modality and target_modality are both {self.source_modality!r}")
        seen: list[str] = []
        for m in self.extra_modalities:
            if m.lower() in (self.source_modality.lower(), self.target_modality.lower()):
                raise ValueError(f"extra_modalities: {m!r} is already the source or the target modality")
            if m.lower() in seen:
                raise ValueError(f"extra_modalities: {m!r} is listed twice")
            seen.append(m.lower())
        return self


class SequenceParams(Section):
    """One simulated acquisition (``lmid.data.phantom``); times in ms, flip angle in degrees."""

    #: ``spin_echo``: S = PD·(1 − e^(−TR/T1))·e^(−TE/T2) (flip not used, 90° assumed);
    #: ``spoiled_gradient_echo``: S = PD·sin α·(1 − E1)/(1 − cos α·E1)·e^(−TE/T2*), E1 = e^(−TR/T1).
    kind: Literal["spin_echo", "spoiled_gradient_echo"]
    tr_ms: float = Field(gt=0)
    te_ms: float = Field(ge=0)
    flip_deg: float = Field(default=90.0, gt=0, le=180)


class TissueParams(Section):
    """Relative proton density (CSF = 1) and relaxation times in ms of one tissue."""

    pd: float = Field(gt=0, le=1.5)
    t1_ms: float = Field(gt=0)
    t2_ms: float = Field(gt=0)
    t2s_ms: float = Field(gt=0)


class SimulateParams(Section):
    """The embedded default data: simulated brains in the IXI layout (``lmid generate``)."""

    #: Subjects IXI002, IXI003, ... (three digits, as in IXI).
    n_subjects: int = Field(default=30, ge=3, le=998)
    #: Isotropic voxel size in mm. The template is 1 mm; 1.5 mm puts a brain-cropped axial slice
    #: at about 128 px, the paper's size (the demo uses 2 mm for speed).
    voxel_mm: float = Field(default=1.5, gt=0, le=4)
    #: Only simulate this many axial planes around the template centre (0 = whole brain).
    axial_planes: int = Field(default=0, ge=0)
    #: Mean brain signal of each image over the standard deviation of the Gaussian noise in each of
    #: the real and imaginary channels (the magnitude is Rician).
    snr: float = Field(default=40.0, gt=0)
    #: Relative jitter (one standard deviation) of TR/TE/flip per subject and modality.
    sequence_jitter: float = Field(default=0.03, ge=0, lt=0.5)
    #: Relative jitter (one standard deviation) of PD/T1/T2/T2* per subject and tissue.
    tissue_jitter: float = Field(default=0.03, ge=0, lt=0.5)
    #: RMS of each component of the non-rigid displacement (mm), a cubic B-spline field with knots
    #: ``deformation_smoothness_mm`` apart.
    deformation_mm: float = Field(default=3.0, ge=0)
    deformation_smoothness_mm: float = Field(default=20.0, gt=0)
    #: Rotation angles about each axis drawn uniformly in ±rotation_deg.
    rotation_deg: float = Field(default=5.0, ge=0, le=45)
    #: Scale factor of each axis drawn uniformly in 1 ± scale.
    scale: float = Field(default=0.05, ge=0, lt=0.5)
    #: Multiplicative bias field per image, spanning e^(±bias_strength/2) (BrainWeb's "20 % INU"
    #: is 0.2: about ±10 %).
    bias_strength: float = Field(default=0.2, ge=0, lt=1)
    sites: list[str] = Field(default=["Guys", "HH", "IOP"], min_length=1)
    tissues: dict[Literal["csf", "gm", "wm"], TissueParams] = {
        # 1.5 T, in vivo. PD: water content relative to CSF (Neeb et al., NeuroImage 2006: WM ≈ 0.69,
        # GM ≈ 0.80). T1: Rooney et al., MRM 57:308 (2007), 1.5 T: WM ≈ 0.65–0.75 s, cortex
        # ≈ 1.1–1.2 s, CSF ≈ 4.1–4.4 s (Stanisz et al., MRM 54:507 (2005) give WM 884, GM 1124 ms,
        # at the top of the WM range). T2: Stanisz 2005, 1.5 T: WM 72, GM 95 ms; CSF ≈ 2 s.
        # T2*: Peters et al., MRI 25:748 (2007), 1.5 T: WM 66.2, GM 84.0 ms; CSF's T2* is not well
        # measured and barely matters at TE ≈ 5 ms.
        "csf": TissueParams(pd=1.00, t1_ms=4200.0, t2_ms=1990.0, t2s_ms=1500.0),
        "gm": TissueParams(pd=0.80, t1_ms=1100.0, t2_ms=95.0, t2s_ms=84.0),
        "wm": TissueParams(pd=0.70, t1_ms=700.0, t2_ms=75.0, t2s_ms=66.0),
    }
    #: Simulate a whole head: CSF, skull (two tables of cortical bone around fatty marrow), fat
    #: and skin shells outside the brain, like IXI, which is not skull-stripped. The tissue map
    #: (so the true brain mask) stays the brain's. ``false``: a skull-stripped brain.
    head: bool = False
    head_tissues: dict[Literal["bone", "marrow", "fat", "skin"], TissueParams] = {
        # 1.5 T. Fat: T1 ≈ 260 ms, T2 ≈ 80 ms (de Bazelaire et al., Radiology 230:652 (2004),
        # subcutaneous fat at 1.5 T: 343/58 ms; Gold et al. 2004 similar), bright on T1 and PD.
        # Diploic marrow of the adult skull is mostly fatty. Cortical bone has few mobile protons
        # and a T2 well under 1 ms: dark on every clinical sequence. Skin/galea/muscle: muscle at
        # 1.5 T, T1 ≈ 1,000 ms, T2 ≈ 44 ms (Stanisz 2005: 1008/44 ms).
        "bone": TissueParams(pd=0.05, t1_ms=300.0, t2_ms=0.5, t2s_ms=0.4),
        "marrow": TissueParams(pd=0.85, t1_ms=380.0, t2_ms=70.0, t2s_ms=30.0),
        "fat": TissueParams(pd=0.90, t1_ms=300.0, t2_ms=65.0, t2s_ms=30.0),
        "skin": TissueParams(pd=0.75, t1_ms=1000.0, t2_ms=44.0, t2s_ms=30.0),
    }
    sequences: dict[str, SequenceParams] = {
        # IXI (Guys, Philips 1.5 T): PD and T2 are the two echoes (TE 8 / 100 ms) of one dual-echo
        # turbo spin echo with TR ≈ 8178 ms; a long TR keeps CSF brightest on PD (with TR 3000 ms
        # CSF would fall below WM). IXI's T1 is a magnetisation-prepared gradient echo (TE 4.6 ms)
        # that no steady-state equation describes; a spoiled gradient echo with TR 20 ms / 30°
        # gives the same tissue order (WM > GM > CSF).
        "T1": SequenceParams(kind="spoiled_gradient_echo", tr_ms=20.0, te_ms=4.6, flip_deg=30.0),
        "PD": SequenceParams(kind="spin_echo", tr_ms=8178.0, te_ms=8.0),
        "T2": SequenceParams(kind="spin_echo", tr_ms=8178.0, te_ms=100.0),
    }


class UnseenProtocolParams(Section):
    """A second simulated protocol that no model is trained on (``lmid generate --protocol unseen``).

    The same subjects (same anatomy, labels and split) are simulated again with another field
    strength's tissue values and other TR/TE, then translated by the models trained on the main
    protocol as they are: the zero-shot promise of adapting to a changed source without retraining.
    """

    #: Run the unseen-protocol experiments. ``null``: yes for simulated data, no for IXI/BraTS
    #: folders (which have no twin on another protocol); ``true`` needs simulated data.
    enabled: bool | None = None
    #: Experiment suffix: PD → T1 on this protocol is experiment ``pd2t1_<name>``.
    name: str = Field(default="3t", pattern=r"^[a-z0-9]{1,12}$")
    #: Sources translated on this protocol (each must be data.source_modality or an extra one);
    #: ``null``: every translated source.
    sources: list[str] | None = Field(default=None, min_length=1)
    #: SNR of the second scanner (``null`` keeps ``simulate.snr``).
    snr: float | None = Field(default=30.0, gt=0)
    tissues: dict[Literal["csf", "gm", "wm"], TissueParams] = {
        # 3 T, in vivo. T1/T2: Wansapura et al., JMRI 9:531 (1999): WM 832/80, GM 1331/110 ms;
        # CSF T1 ≈ 4.3 s (Lu et al., MRM 2005). T2*: Peters et al., MRI 25:748 (2007), 3 T: WM 53.2,
        # GM 66.0 ms. PD is water content and does not change with the field.
        "csf": TissueParams(pd=1.00, t1_ms=4300.0, t2_ms=1800.0, t2s_ms=1200.0),
        "gm": TissueParams(pd=0.80, t1_ms=1330.0, t2_ms=110.0, t2s_ms=66.0),
        "wm": TissueParams(pd=0.70, t1_ms=830.0, t2_ms=80.0, t2s_ms=53.0),
    }
    #: Sequences replaced for this protocol; modalities not named keep ``simulate.sequences``.
    #: A shorter TR (6 s) and other echo times: on PD, CSF falls towards GM (0.75 vs 0.71 of
    #: the CSF PD) where the main protocol keeps it clearly brightest.
    sequences: dict[str, SequenceParams] = {
        "PD": SequenceParams(kind="spin_echo", tr_ms=6000.0, te_ms=12.0),
        "T2": SequenceParams(kind="spin_echo", tr_ms=6000.0, te_ms=90.0),
    }


class SplitFractions(Section):
    train: float = Field(default=0.6, gt=0, lt=1)
    val: float = Field(default=0.2, ge=0, lt=1)
    test: float = Field(default=0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class SliceCounts(Section):
    train: int = Field(default=300, ge=1)
    val: int = Field(default=30, ge=0)
    test: int = Field(default=75, ge=1)


class PrepareParams(Section):
    size: int = Field(default=64, ge=16, le=512)
    #: Where the brain mask comes from (``lmid.data.reader``): ``labels``, the tissue map > 0;
    #: ``strip``, skull stripping of the source (BET's deformable surface, ``brainextractor``);
    #: ``head``, the source's foreground (threshold, largest component, holes filled), which is
    #: the brain on skull-stripped data (BraTS) and the whole head on IXI. ``auto``: ``labels`` for
    #: simulated brains, ``strip`` for simulated heads and IXI, ``head`` for BraTS.
    brain_mask: Literal["auto", "labels", "strip", "head"] = "auto"
    #: ``strip``: BET's fractional intensity threshold (its ``-f``; BET's default is 0.5); smaller
    #: gives a larger brain. 0.6 keeps fat out of the mask of the simulated heads (measured in
    #: docs/method.md, section 6).
    strip_threshold: float = Field(default=0.6, gt=0, lt=1)
    #: N4 bias-field correction (SimpleITK) of every volume inside the dilated brain mask before
    #: normalisation: ``n4`` or ``none``. Off by default: on the simulated data it changed the
    #: K-Means Dice ceiling by less than its noise, either way (docs/method.md, section 6); every
    #: run with tissue maps measures both (``manifest.json``: ``bias_check``).
    bias_correction: Literal["none", "n4"] = "none"
    #: Keep axial slices whose brain-mask area is at least this fraction of the largest brain slice
    #: of the same volume (drops the top and bottom of the brain).
    min_brain_fraction: float = Field(default=0.35, ge=0, le=1)
    #: Intensity normalisation: clip to these percentiles inside the brain, then map to [0, 1].
    percentiles: tuple[float, float] = (0.5, 99.5)
    split: SplitFractions = SplitFractions()
    slices: SliceCounts = SliceCounts()

    @model_validator(mode="after")
    def _percentiles(self):
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {list(self.percentiles)}")
        return self


# ---------------------------------------------------------------------------------------- models
class LmiParams(Section):
    #: ``authors``: the released layer, numbers for numbers; ``exact``: true windows, differentiable.
    mode: Literal["authors", "exact"] = "authors"
    window: int = Field(default=3, ge=3, le=9)
    bins: int = Field(default=27, ge=4, le=256)
    sigma: float = Field(default=2.0, gt=0)


class ScheduleParams(Section):
    timesteps: int = Field(default=1000, ge=2)
    beta_start: float = Field(default=1e-4, gt=0, lt=1)
    beta_end: float = Field(default=0.02, gt=0, lt=1)


class UNetParams(Section):
    channels: tuple[int, ...] = (64, 128, 128, 128)
    attention_levels: tuple[bool, ...] = (False, False, False, True)
    num_res_blocks: int = Field(default=2, ge=1)
    num_head_channels: int = Field(default=64, ge=1)
    norm_num_groups: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _levels_match(self):
        if len(self.channels) != len(self.attention_levels):
            raise ValueError("channels and attention_levels must have the same length")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError("every entry of channels must be divisible by norm_num_groups")
        return self


class TrainParams(Section):
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=4, ge=1)
    lr: float = Field(default=3e-4, gt=0)
    checkpoint_every: int = Field(default=250, ge=1)
    log_every: int = Field(default=10, ge=1)


class SnapshotTrainParams(TrainParams):
    #: Also keep the inference weights (EMA where there is one) every this many steps (0 = never)
    #: under ``snapshots/``, with the training CPU-seconds spent so far: the convergence curve and
    #: the compute-matched comparison are scored on them.
    snapshot_every: int = Field(default=0, ge=0)


class DiffusionTrainParams(SnapshotTrainParams):
    #: The released IXI config trains 10,000 epochs of 300 slices at batch 4 = 750k iterations;
    #: with EMA 0.9999 far fewer steps would sample from weights close to the initial ones.
    steps: int = Field(default=750_000, ge=1)
    checkpoint_every: int = Field(default=5000, ge=1)
    log_every: int = Field(default=100, ge=1)
    grad_clip: float = Field(default=1.0, gt=0)
    ema_decay: float = Field(default=0.9999, ge=0, lt=1)
    flip_prob: float = Field(default=0.5, ge=0, le=1)
    blur_prob: float = Field(default=0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    #: Blur σ levels: 0 draws σ uniformly from ``blur_sigma``; N > 0 draws one of N evenly spaced
    #: levels on it, so every augmented slice is one of 2·(N + 1) variants whose LMI(x_0, x_0)
    #: map can be cached (see ``cache_self_lmi``).
    blur_levels: int = Field(default=4, ge=0, le=64)
    #: LMIDiffusion: compute LMI(x_0, x_0) once per training slice and augmentation variant
    #: instead of at every step (same numbers; off only to time the uncached step).
    cache_self_lmi: bool = True
    #: bf16 autocast of the U-Net (fp32 weights, optimiser state and loss): on CUDA (with
    #: channels_last), and on a CPU with bf16 units (AMX or AVX512-BF16); elsewhere float32.
    mixed_precision: bool = True
    #: EMA warm-up: decay min(ema_decay, (1 + k) / (10 + k)) at step k, so early snapshots are not
    #: dominated by the initial weights (off: the authors' constant decay).
    ema_warmup: bool = False
    #: Learning rate: ``constant`` (the authors') or ``cosine`` (decayed to ``lr_min_fraction``·lr
    #: at ``steps``), after a linear warm-up over ``lr_warmup_steps``.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_warmup_steps: int = Field(default=0, ge=0)
    lr_min_fraction: float = Field(default=0.0, ge=0, le=1)
    #: ε-loss weighting: ``none`` (plain ε-MSE, the authors') or ``min_snr`` (Hang et al. 2023:
    #: weight min(SNR_t, γ) / SNR_t with SNR_t = ᾱ_t / (1 − ᾱ_t), γ = ``min_snr_gamma``).
    loss_weighting: Literal["none", "min_snr"] = "none"
    min_snr_gamma: float = Field(default=5.0, gt=0)


class SamplerParams(Section):
    #: ``ancestral``: the authors' 1000-step DDPM sampler; ``ddim``: few-step deterministic-ish.
    kind: Literal["ancestral", "ddim"] = "ancestral"
    #: Network evaluations per chain. Ancestral with ``steps`` >= T walks every timestep (the
    #: paper); fewer walks an evenly spaced sub-sequence (respaced DDPM).
    steps: int = Field(default=1000, ge=1)
    #: How few-step samplers place their steps: ``uniform``, ``quad`` (dense at small t, where
    #: the LMI map of x_t is informative) or ``trailing``; see ``NoiseSchedule.timesteps``.
    spacing: Literal["uniform", "quad", "trailing"] = "uniform"
    eta: float = Field(default=0.0, ge=0, le=1)
    #: Ancestral only: clip x̂_0 to [0, 1] inside the posterior mean (Ho et al. 2020's sampler).
    #: Off reproduces the released code, whose posterior mean is never clipped.
    clip_x0: bool = False
    #: Start from pure noise (the paper) or from the source noised to ``start_t`` (a fraction of T).
    start: Literal["noise", "source"] = "noise"
    start_t: float = Field(default=1.0, gt=0, le=1)
    samples: int = Field(default=1, ge=1)
    #: Chains (slices × samples) denoised together.
    batch_size: int = Field(default=16, ge=1)


class DiffusionParams(Section):
    schedule: ScheduleParams = ScheduleParams()
    unet: UNetParams = UNetParams()
    train: DiffusionTrainParams = DiffusionTrainParams()


class LmiDiffusionParams(Section):
    sampler: SamplerParams = SamplerParams()


class SdeditParams(Section):
    #: Candidate noise levels t0 / T; the best on the validation split is used on test.
    t0_grid: list[float] = [0.2, 0.3, 0.4, 0.5]
    repeats: int = Field(default=3, ge=1)
    #: Validation slices used to choose t0 (0 = all).
    val_slices: int = Field(default=0, ge=0)
    #: ``ancestral`` (the reference) or ``ddim`` (eta 0) with ``steps`` steps from t0 to 0.
    kind: Literal["ancestral", "ddim"] = "ancestral"
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=16, ge=1)


class CycleGanParams(Section):
    """CycleGAN baseline. Defaults: the reference implementation at 128 px (1-channel slices)."""

    #: Fraction of the training slices whose SOURCE image CycleGAN may see (11 % in the paper).
    source_fraction: float = Field(default=0.11, gt=0, le=1)
    #: Residual blocks of each ResNet generator (6 at 128 px; 7.82 M parameters at 64 filters).
    res_blocks: int = Field(default=6, ge=1)
    base_filters: int = Field(default=64, ge=4)
    disc_filters: int = Field(default=64, ge=4)
    #: PatchGAN stride-2 layers (3: 70×70 receptive field; needs slices of at least 32 px).
    disc_layers: int = Field(default=3, ge=1)
    lambda_cycle: float = Field(default=10.0, ge=0)
    #: Identity weight, relative to ``lambda_cycle`` (0.5 → 5).
    lambda_identity: float = Field(default=0.5, ge=0)
    #: History of generated images shown to the discriminators (0 = none).
    pool_size: int = Field(default=50, ge=0)
    #: 60,000 steps at batch 1 = the reference's 100 + 100 epochs of max(|A|, |B|) = 300 images.
    train: SnapshotTrainParams = SnapshotTrainParams(
        steps=60000, batch_size=1, lr=2e-4, checkpoint_every=5000, log_every=100
    )
    #: Fraction of steps at constant learning rate before the linear decay to 0.
    constant_fraction: float = Field(default=0.5, ge=0, le=1)
    beta1: float = Field(default=0.5, ge=0, lt=1)


class StyleGan2Params(Section):
    """StyleGAN2-ADA baseline. Defaults: the reference's ``auto`` configuration at 128 px
    (batch 32, lr 0.0025, γ = 0.0002·128²/32, 2 mapping layers, channel_base 16384 capped at 512,
    EMA half-life 10 kimg); ADA adjustment speed 500 kimg as in the ADA reference."""

    z_dim: int = Field(default=512, ge=8)
    w_dim: int = Field(default=512, ge=8)
    mapping_layers: int = Field(default=2, ge=1)
    #: Feature maps at resolution r: min(channels, channel_base // r).
    channels: int = Field(default=512, ge=8)
    channel_base: int = Field(default=16384, ge=64)
    r1_gamma: float = Field(default=0.1024, ge=0)
    #: Lazy regularisation: R1 every this many D steps (its weight is multiplied by the interval).
    r1_every: int = Field(default=16, ge=1)
    #: Upper bound of the EMA decay per step (0.5 ** (32 / 10000): 10 kimg half-life at batch 32).
    ema_decay: float = Field(default=0.99778, ge=0, lt=1)
    ada_target: float = Field(default=0.6, gt=0, lt=1)
    ada_interval: int = Field(default=4, ge=1)
    #: Thousands of images for the augmentation probability p to go from 0 to 1.
    ada_kimg: float = Field(default=500.0, gt=0)
    #: 20,000 steps × 32 = 640 kimg.
    train: SnapshotTrainParams = SnapshotTrainParams(
        steps=20000, batch_size=32, lr=2.5e-3, checkpoint_every=1000, log_every=100
    )
    #: GAN inversion (reference projector): Adam steps per slice, peak lr, z samples for the mean w.
    invert_steps: int = Field(default=1000, ge=1)
    invert_lr: float = Field(default=0.1, gt=0)
    invert_w_samples: int = Field(default=10000, ge=1)
    invert_noise_weight: float = Field(default=1e5, ge=0)
    #: Cross-modal inversion distance (LPIPS-VGG cannot be downloaded): ``nmi_mind`` = (1 − global
    #: Parzen NMI) + MIND descriptor L1; ``lmi_mind`` = (1 − exact LMI relative to LMI(s, s)) + MIND
    #: (uses the ``lmi`` section; ~100× slower).
    invert_loss: Literal["nmi_mind", "nmi_mind_hist", "lmi_mind"] = "nmi_mind"
    #: ``nmi_mind_hist`` (a named variant): the weight of its intensity-distribution term, W1 between
    #: the generated slice's intensities inside the source's foreground and the target training
    #: slices' foreground intensities (NMI and MIND ignore absolute intensity, so the faithful
    #: projector is free to saturate).
    invert_hist_weight: float = Field(default=1.0, ge=0)


class CdmParams(Section):
    """CDM, the supervised upper bound (paired slices). Defaults: paper scale at 128 px."""

    #: Length of the target-distribution vector z (192 in the authors' code).
    vector_dim: int = Field(default=192, ge=4)
    #: MRM: fraction of ``patch``×``patch`` patches masked per target slice.
    mask_ratio: float = Field(default=0.5, gt=0, lt=1)
    patch: int = Field(default=8, ge=2)
    #: MRM encoder widths, one stride-2 level each (128 px → 8×8 bottleneck with four levels).
    mrm_channels: tuple[int, ...] = (64, 128, 256, 256)
    mdn_blocks: int = Field(default=4, ge=1)
    mdn_hidden: int = Field(default=512, ge=8)
    mdn_timesteps: int = Field(default=1000, ge=2)
    mdn_ddim_steps: int = Field(default=50, ge=1)
    #: C-UNet widths, one resolution level each.
    unet_channels: tuple[int, ...] = (64, 128, 256, 512)
    #: Horizontal-flip augmentation (MRM and C-UNet stages; source and target flipped together).
    flip_prob: float = Field(default=0.5, ge=0, le=1)
    grad_clip: float = Field(default=1.0, gt=0)
    #: Slices per C-UNet pass when translating.
    translate_batch_size: int = Field(default=32, ge=1)
    mrm: TrainParams = TrainParams(steps=20000, batch_size=16, lr=1e-4, checkpoint_every=1000, log_every=50)
    mdn: TrainParams = TrainParams(steps=20000, batch_size=64, lr=1e-4, checkpoint_every=1000, log_every=50)
    unet: TrainParams = TrainParams(steps=20000, batch_size=8, lr=1e-4, checkpoint_every=1000, log_every=50)

    @model_validator(mode="after")
    def _widths(self):
        if not self.mrm_channels or not self.unet_channels:
            raise ValueError("mrm_channels and unet_channels need at least one level")
        if any(c < 1 for c in (*self.mrm_channels, *self.unet_channels)):
            raise ValueError("channel widths must be positive")
        return self


class HistMatchParams(Section):
    #: Reference quantiles of the target training intensities inside the brain mask.
    n_quantiles: int = Field(default=256, ge=8)
    #: At translation the brain of a source slice is where source > this (background is 0 after
    #: ``prepare``); those pixels are quantile-mapped, the rest stay 0.
    mask_threshold: float = Field(default=0.01, ge=0, lt=1)


def _ordered_range(name: str, pair) -> None:
    lo, hi = pair
    if lo > hi:
        raise ValueError(f"{name}: the low end {lo:g} is above the high end {hi:g}")


class SynthesisParams(Section):
    """How ``synthseg`` paints each training image on a K-Means label map
    (:mod:`lmid.methods.synthseg_synthesis`; intensities on the [0, 1] scale of the prepared slices)."""

    #: Mean intensity of each tissue class (CSF, GM, WM), drawn uniformly and independently per image.
    tissue_mean: tuple[float, float] = (0.0, 1.0)
    #: Mean intensity of the background (label 0), drawn uniformly per image.
    background_mean: tuple[float, float] = (0.0, 0.3)
    #: Standard deviation of each label's intensity, drawn uniformly per label and image.
    std: tuple[float, float] = (0.0, 0.08)
    #: Left-right flip of the label map.
    flip_prob: float = Field(default=0.5, ge=0, le=1)
    #: Probability of deforming the label map: a random affine and an elastic field together.
    deform_prob: float = Field(default=0.8, ge=0, le=1)
    rotate_deg: float = Field(default=10.0, ge=0, le=180)
    #: Scale factor of each axis in 1 ± scale.
    scale: float = Field(default=0.1, ge=0, lt=1)
    #: Shift of each axis within ± this fraction of the slice side.
    translate: float = Field(default=0.03, ge=0, lt=0.5)
    #: Elastic field: control points this fraction of the slice side apart ...
    elastic_spacing: float = Field(default=0.25, gt=0, le=1)
    #: ... displaced by a magnitude drawn from this range, in fractions of the slice side.
    elastic_magnitude: tuple[float, float] = (0.0, 0.02)
    #: Gaussian blur, σ per axis drawn from ``blur_sigma`` pixels.
    blur_prob: float = Field(default=0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    #: Resolution loss: down-sampled by a factor drawn from ``lowres_zoom``, then up-sampled.
    lowres_prob: float = Field(default=0.5, ge=0, le=1)
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    #: Multiplicative bias field exp(Σ c_k L_k), Legendre polynomials of ``bias_degree``,
    #: coefficients uniform in ± ``bias_coeff``.
    bias_prob: float = Field(default=0.5, ge=0, le=1)
    bias_degree: int = Field(default=3, ge=1, le=6)
    bias_coeff: float = Field(default=0.3, ge=0, le=2)
    #: Rician noise: the standard deviation of each complex channel drawn in [0, ``noise_std``].
    noise_prob: float = Field(default=0.5, ge=0, le=1)
    noise_std: float = Field(default=0.05, ge=0, le=1)
    #: Random gamma of the normalised image, drawn uniformly from ``gamma``.
    gamma_prob: float = Field(default=0.5, ge=0, le=1)
    gamma: tuple[float, float] = (0.7, 1.5)

    @model_validator(mode="after")
    def _ranges(self):
        for name in (
            "tissue_mean",
            "background_mean",
            "std",
            "elastic_magnitude",
            "blur_sigma",
            "lowres_zoom",
            "gamma",
        ):
            _ordered_range(name, getattr(self, name))
        for name in ("tissue_mean", "background_mean", "std", "elastic_magnitude"):
            if min(getattr(self, name)) < 0:
                raise ValueError(f"{name}: values must be at least 0")
        if self.blur_sigma[0] <= 0:
            raise ValueError("blur_sigma: σ must be positive (set blur_prob: 0 for no blur)")
        if not 0 < self.lowres_zoom[0] <= self.lowres_zoom[1] <= 1:
            raise ValueError("lowres_zoom: factors must lie in (0, 1]")
        if self.gamma[0] <= 0:
            raise ValueError("gamma: must be positive")
        return self


class SynthSegTrainParams(SnapshotTrainParams):
    #: EMA of the weights (the EMA weights are saved and segment); 0 = none.
    ema_decay: float = Field(default=0.0, ge=0, lt=1)
    #: Gradient-norm clip (0 = none).
    grad_clip: float = Field(default=1.0, ge=0)


class SynthSegParams(Section):
    """``synthseg``: a contrast-agnostic segmenter trained on images synthesised from the K-Means
    labels of the target training slices; it translates nothing (docs/method.md §5)."""

    #: Widths of MONAI's 2-D residual UNet, one resolution level each (stride 2 between levels).
    channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    #: Residual units per level (0: plain convolutions).
    num_res_units: int = Field(default=2, ge=0, le=4)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    synthesis: SynthesisParams = SynthesisParams()
    train: SynthSegTrainParams = SynthSegTrainParams(
        steps=20000, batch_size=16, lr=1e-3, checkpoint_every=1000, log_every=50
    )
    #: Slices per network pass when segmenting.
    translate_batch_size: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _widths(self):
        if len(self.channels) < 2 or any(c < 1 for c in self.channels):
            raise ValueError("channels: at least two levels, each of a positive width")
        return self


class TranslateParams(Section):
    #: The test split is translated in this many independent jobs per method (Slurm jobs).
    shards: int = Field(default=2, ge=1)


# ---------------------------------------------------------------------------------- evaluation
class SegmentParams(Section):
    #: K-Means clusters inside the brain mask, mapped to tissues by centroid intensity (with more than
    #: 3 clusters, each joins the nearest centroid of a 3-cluster fit on the same voxels).
    n_clusters: int = Field(default=3, ge=2, le=10)
    #: Training voxels sampled for fitting (0 = all).
    max_voxels: int = Field(default=200_000, ge=0)
    #: Tissues from darkest to brightest in the TARGET modality (T1: CSF < GM < WM; T2/PD: reversed).
    tissue_order: tuple[Literal["CSF", "GM", "WM"], Literal["CSF", "GM", "WM"], Literal["CSF", "GM", "WM"]] = (
        "CSF",
        "GM",
        "WM",
    )

    @model_validator(mode="after")
    def _order(self):
        if sorted(self.tissue_order) != ["CSF", "GM", "WM"]:
            raise ValueError("tissue_order must name CSF, GM and WM once each")
        return self


#: A sampler setting of the sampler table: ``<kind>-<steps>[-<spacing>][-eta<η>][-clip]``, e.g.
#: ``ddim-25-quad-eta1`` or ``ancestral-1000-clip`` (spacing ``uniform``, η 0 and no clip when
#: left out). The one definition: the Snakefile's wildcard and the table reader use it too.
SAMPLER_SETTING = (
    r"(ancestral|ddim)-[1-9][0-9]*(-(uniform|quad|trailing))?"
    r"(-eta(0|1|0\.[0-9]*[1-9]))?(-clip)?"
)
SAMPLER_SETTING_HELP = "'<ancestral|ddim>-<steps>[-<uniform|quad|trailing>][-eta<0..1>][-clip]'"


def parse_sampler_setting(setting: str) -> dict:
    """``ddim-20-quad-eta1`` → {kind: ddim, steps: 20, spacing: quad, eta: 1.0, clip_x0: False}."""
    import re

    m = re.fullmatch(SAMPLER_SETTING, setting)
    if not m:
        raise ValueError(f"{setting!r} is not {SAMPLER_SETTING_HELP}")
    kind, steps = setting.split("-")[:2]
    eta = float(m.group(5)) if m.group(5) is not None else 0.0
    clip = m.group(6) is not None
    if clip and kind != "ancestral":
        raise ValueError(f"{setting!r}: -clip applies to the ancestral sampler only (DDIM always clips x̂_0)")
    if eta and kind != "ddim":
        raise ValueError(f"{setting!r}: -eta applies to DDIM only (ancestral is η = 1 by construction)")
    return {"kind": kind, "steps": int(steps), "spacing": m.group(3) or "uniform", "eta": eta, "clip_x0": clip}


def sampler_setting(sp: "SamplerParams") -> str:
    """The sampler-table name of a sampler (the inverse of :func:`parse_sampler_setting`)."""
    name = f"{sp.kind}-{sp.steps}-{sp.spacing}"
    if sp.kind == "ddim" and sp.eta:
        name += f"-eta{sp.eta:g}"
    if sp.kind == "ancestral" and sp.clip_x0:
        name += "-clip"
    return name


class EvaluateParams(Section):
    bootstrap: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    #: The method every other one is compared against (paired Wilcoxon signed-rank test).
    reference_method: MethodName = "lmidiffusion"
    #: Sampler table: LMIDiffusion settings (``SAMPLER_SETTING``) run on ``sampler_slices``
    #: validation slices spread evenly over every validation subject; the best is the test sampler.
    sampler_settings: list[str] = ["ancestral-1000", "ddim-100", "ddim-50", "ddim-25", "ddim-10"]
    sampler_slices: int = Field(default=16, ge=1)
    #: Chains per sweep slice (each with its own seeds), so one lucky draw does not pick the sampler.
    sampler_chains: int = Field(default=1, ge=1)
    #: With ``paths.published``: slices of each sampler setting re-sampled from the published
    #: weights, whose scores must equal the published sweep's before it is reused (0: sample all).
    published_sweep_check: int = Field(default=2, ge=0)
    #: Validation slices of ``lmid diagnose`` (ablation, oracle, convergence curve).
    diagnostic_slices: int = Field(default=16, ge=2)

    @model_validator(mode="after")
    def _settings(self):
        for s in self.sampler_settings:
            try:
                parse_sampler_setting(s)
            except ValueError as err:
                raise ValueError(f"sampler_settings: {err}") from None
        return self


class ReportParams(Section):
    #: Test slices shown in the qualitative grid.
    grid_slices: int = Field(default=4, ge=1)
    title: str = "LMIDiffusion: zero-shot PD → T1 translation and segmentation"


# -------------------------------------------------------------------------------------- root
class PathsParams(Section):
    """Where a run writes: intermediate files (git-ignored, DVC-tracked) and the report a reader opens.

    Each preset gets its own pair, so the study does not overwrite the committed demo report."""

    data: str = "data"
    reports: str = "reports"
    #: Trained models published by ``lmid publish`` (e.g. ``models/study``): when set, the workflow's
    #: train jobs check and copy these (``lmid use-published``) instead of training.
    published: str | None = None

    @field_validator("data", "reports", "published")
    @classmethod
    def _usable_folders(cls, value: str | None) -> str | None:
        return None if value is None else check_folder_param(value)


class Params(Section):
    seed: int = Field(default=1234, ge=0)
    preset: Literal["demo", "head", "study", "paper", "test"] = "demo"
    methods: list[MethodName] = Field(default=list(METHOD_NAMES), min_length=1)
    paths: PathsParams = PathsParams()
    data: DataParams = DataParams()
    simulate: SimulateParams = SimulateParams()
    unseen_protocol: UnseenProtocolParams = UnseenProtocolParams()
    prepare: PrepareParams = PrepareParams()
    lmi: LmiParams = LmiParams()
    diffusion: DiffusionParams = DiffusionParams()
    lmidiffusion: LmiDiffusionParams = LmiDiffusionParams()
    sdedit: SdeditParams = SdeditParams()
    cyclegan: CycleGanParams = CycleGanParams()
    stylegan2: StyleGan2Params = StyleGan2Params()
    cdm: CdmParams = CdmParams()
    histmatch: HistMatchParams = HistMatchParams()
    synthseg: SynthSegParams = SynthSegParams()
    translate: TranslateParams = TranslateParams()
    segment: SegmentParams = SegmentParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods lists a method twice")
        # The diffusion U-Net halves the slice once per level after the first.
        levels = len(self.diffusion.unet.channels) - 1
        if {"lmidiffusion", "sdedit"} & set(self.methods) and self.prepare.size % 2**levels:
            raise ValueError(
                f"prepare.size {self.prepare.size} must be divisible by {2**levels}: the diffusion "
                f"U-Net ({len(self.diffusion.unet.channels)} levels of diffusion.unet.channels) halves "
                f"it {levels} times"
            )
        # The segmentation reference's U-Net halves the slice once per level after the first; its
        # instance norm needs more than one pixel at the lowest level.
        seg_levels = len(self.synthseg.channels) - 1
        if "synthseg" in self.methods and self.prepare.size < 2 ** (seg_levels + 1):
            raise ValueError(
                f"prepare.size {self.prepare.size} is too small for synthseg.channels: {seg_levels + 1} levels "
                f"need slices of at least {2 ** (seg_levels + 1)} pixels"
            )
        # Simulated volumes are an output of the run: the workflow makes (and replaces) data.root,
        # so it must lie under the run's own folder, never beside it in the default data/raw.
        root, data = os.path.abspath(self.data.root), os.path.abspath(self.paths.data)
        if self.data.source == "simulated" and (root == data or not _contains(data, root)):
            raise ValueError(
                f"data.root {self.data.root!r} must be a folder inside paths.data {self.paths.data!r} "
                f"for simulated data (the run writes it), e.g. {self.paths.data.rstrip('/')}/raw"
            )
        unseen = self.unseen_protocol
        if unseen.enabled and self.data.source != "simulated":
            raise ValueError(
                f"unseen_protocol.enabled needs data.source: simulated (got {self.data.source!r}); "
                "set unseen_protocol.enabled: false for your own data"
            )
        if self.unseen_protocol_active:
            known = {self.data.source_modality, *self.data.extra_modalities}  # never the target (DataParams)
            if unseen.sources is not None and not set(unseen.sources) <= known:
                raise ValueError(
                    f"unseen_protocol.sources {unseen.sources} must be among the translated sources "
                    f"{sorted(known)} (data.source_modality, data.extra_modalities)"
                )
            missing = sorted(set(unseen.sequences) - set(self.simulate.sequences))
            if missing:
                raise ValueError(
                    f"unseen_protocol.sequences names {missing}, which simulate.sequences does not simulate"
                )
        return self

    @property
    def unseen_protocol_active(self) -> bool:
        """Whether the unseen-protocol experiments run (``unseen_protocol.enabled``)."""
        enabled = self.unseen_protocol.enabled
        return self.data.source == "simulated" if enabled is None else enabled

    @property
    def unseen_sources(self) -> list[str]:
        """Sources translated on the unseen protocol (none when it is off)."""
        if not self.unseen_protocol_active:
            return []
        known = [self.data.source_modality, *self.data.extra_modalities]  # distinct, never the target (DataParams)
        chosen = self.unseen_protocol.sources
        return known if chosen is None else [m for m in known if m in chosen]

    def unseen_simulation(self) -> "Params":
        """These params with ``simulate`` switched to the unseen protocol (same seed: same subjects)."""
        u = self.unseen_protocol
        sim = self.simulate.model_copy(
            update={
                "tissues": dict(u.tissues),
                "sequences": {**self.simulate.sequences, **u.sequences},
                "snr": self.simulate.snr if u.snr is None else u.snr,
            }
        )
        return self.model_copy(update={"simulate": sim})


def _format_validation_error(path: Path, err: ValidationError, override_keys=(), overrides_label: str = "") -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelt?)"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {e.get('input')!r}"
        given = [k for k in override_keys if key == k or key.startswith(k + ".")]
        # `--set seed.x=1` makes `seed` a mapping: the error is at `seed`, the cause is the --set.
        deeper = [k for k in override_keys if key != "<root>" and k.startswith(key + ".")]
        if given:
            lines.append(f"{overrides_label} {key}: {msg}")
        elif deeper:
            lines.append(f"{overrides_label} {deeper[0]}: {key}: {msg}")
        else:
            lines.append(f"{path}: {key}: {msg}")
    return "\n".join(lines)


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def parse_params(data: dict, path: str | Path = "params.yaml", override_keys=(), overrides_label: str = "") -> Params:
    """Validate an already-parsed mapping (used by the loader and by Snakemake's config)."""
    path = Path(path)
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format_validation_error(path, err, override_keys, overrides_label)) from None


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (the last one would win unseen)."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found key {key!r} twice (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)

#: A number with an exponent and no '.' (``1e-3``): a float in YAML 1.2 (and to DVC, which writes
#: params.yaml), text to PyYAML's YAML 1.1 rules. Read as the number it is, since strings are not
#: accepted where numbers are expected.
EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class NumberLoader(yaml.SafeLoader):
    """Plain YAML data, with ``1e-3`` read as a float (for ``--set`` values)."""


for _loader in (_StrictLoader, NumberLoader):
    _loader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))


def parse_yaml_value(text: str):
    """One ``--set`` value as plain data (a safe loader: no Python objects), ``1e-3`` a float."""
    loader = NumberLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path):
    """A YAML file as Python objects; undecodable bytes, bad syntax and duplicate keys name the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(
            f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})"
        ) from None
    except OSError as err:
        raise ParamsError(f"{path}: cannot read ({err.strerror})") from None
    try:
        loader = _StrictLoader(text)  # a SafeLoader: plain data only, no Python objects
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise ParamsError(f"{path}: not valid YAML: {detail}") from None


def load_params(
    path: str | Path = "params.yaml", overrides: dict | None = None, overrides_label: str = "overrides"
) -> Params:
    """Read, validate and fill defaults. ``overrides`` are deep-merged on top (``--set``, tests);
    an error in one of them is reported under ``overrides_label`` instead of the file's name."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    data = read_yaml(path)
    if data is None:  # an empty file (or only comments) would silently mean every default
        raise ParamsError(
            f"{path}: holds no parameters (the file is empty); a params file sets the sections, "
            "e.g. a copy of params.yaml or a preset"
        )
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    if overrides:
        data = deep_merge(data, overrides)
    return parse_params(data, path, _dotted_keys(overrides or {}), overrides_label)


def dump_params(params: Params) -> str:
    """Every parameter, defaults included, as YAML that :func:`load_params` reads back unchanged."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def write_params(params: Params, path: str | Path) -> None:
    """Write the resolved parameters to ``path``, leaving the file alone when nothing changed."""
    from lmid.io import write_text

    text = "# Resolved parameters of this run (written by the workflow; edit params.yaml instead).\n" + dump_params(
        params
    )
    path = Path(path)
    if not (path.is_file() and path.read_text() == text):
        write_text(path, text)


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def json_schema() -> dict:
    """JSON schema of params.yaml (for Snakemake's ``validate``)."""
    schema = Params.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
