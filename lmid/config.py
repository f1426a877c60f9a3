"""The one typed loader for ``params.yaml``.

Every section of the file has a model here. Unknown keys, wrong types and out-of-range values fail
at start-up with the file name and the dotted key, e.g.
``params.yaml: diffusion.train.lr: Input should be greater than 0``.

Snakemake validates the same file against ``workflow/schemas/params.schema.json``, which is
generated from these models (``lmid schema``), so the two cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmid.errors import ParamsError

METHOD_NAMES = ("lmidiffusion", "sdedit", "cyclegan", "stylegan2", "cdm", "identity", "histmatch")
MethodName = Literal["lmidiffusion", "sdedit", "cyclegan", "stylegan2", "cdm", "identity", "histmatch"]
Modality = str  # "T1", "T2", "PD" for IXI; "t1", "t1ce", "t2", "flair" for BraTS

PosInt = int
Fraction = float


class Section(BaseModel):
    """Base for every section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class SequenceParams(Section):
    kind: Literal["spin_echo", "spoiled_gradient_echo"]
    tr_ms: float = Field(gt=0)
    te_ms: float = Field(ge=0)
    flip_deg: float = Field(default=90.0, gt=0, le=180)


class TissueParams(Section):
    pd: float = Field(gt=0, le=1.5)
    t1_ms: float = Field(gt=0)
    t2_ms: float = Field(gt=0)
    t2s_ms: float = Field(gt=0)


class SimulateParams(Section):
    n_subjects: int = Field(default=10, ge=3)
    #: Voxel size of the simulated volumes (the MNI template is 1 mm; 2 mm keeps the demo fast).
    voxel_mm: float = Field(default=2.0, gt=0, le=4)
    #: Only simulate this many axial planes around the template centre (0 = whole brain).
    axial_planes: int = Field(default=0, ge=0)
    snr: float = Field(default=40.0, gt=0)
    #: Relative jitter (one standard deviation) of TR/TE/flip per subject.
    sequence_jitter: float = Field(default=0.03, ge=0, lt=0.5)
    tissue_jitter: float = Field(default=0.03, ge=0, lt=0.5)
    deformation_mm: float = Field(default=3.0, ge=0)
    deformation_smoothness_mm: float = Field(default=20.0, gt=0)
    rotation_deg: float = Field(default=5.0, ge=0, le=45)
    scale: float = Field(default=0.05, ge=0, lt=0.5)
    bias_strength: float = Field(default=0.2, ge=0, lt=1)
    sites: list[str] = ["Guys", "HH", "IOP"]
    tissues: dict[Literal["csf", "gm", "wm"], TissueParams] = {
        # 1.5 T values (Wansapura 1999, Stanisz 2005, Hasan 2010 ranges)
        "csf": TissueParams(pd=1.00, t1_ms=4200.0, t2_ms=1990.0, t2s_ms=1500.0),
        "gm": TissueParams(pd=0.80, t1_ms=1100.0, t2_ms=95.0, t2s_ms=70.0),
        "wm": TissueParams(pd=0.68, t1_ms=650.0, t2_ms=75.0, t2s_ms=55.0),
    }
    sequences: dict[str, SequenceParams] = {
        "T1": SequenceParams(kind="spoiled_gradient_echo", tr_ms=20.0, te_ms=4.6, flip_deg=30.0),
        "PD": SequenceParams(kind="spin_echo", tr_ms=3000.0, te_ms=15.0),
        "T2": SequenceParams(kind="spin_echo", tr_ms=4000.0, te_ms=100.0),
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
    #: Keep axial slices whose brain mask covers at least this fraction of the slice's bounding
    #: box of the whole-volume brain (drops the top and bottom of the brain).
    min_brain_fraction: float = Field(default=0.35, ge=0, le=1)
    #: Intensity normalisation: clip to these percentiles inside the brain, then map to [0, 1].
    percentiles: tuple[float, float] = (0.5, 99.5)
    split: SplitFractions = SplitFractions()
    slices: SliceCounts = SliceCounts()


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


class DiffusionTrainParams(TrainParams):
    grad_clip: float = Field(default=1.0, gt=0)
    ema_decay: float = Field(default=0.9999, ge=0, lt=1)
    flip_prob: float = Field(default=0.5, ge=0, le=1)
    blur_prob: float = Field(default=0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    #: bf16 autocast and channels_last on CUDA (ignored on CPU).
    mixed_precision: bool = True


class SamplerParams(Section):
    #: ``ancestral``: the authors' 1000-step DDPM sampler; ``ddim``: few-step deterministic-ish.
    kind: Literal["ancestral", "ddim"] = "ancestral"
    steps: int = Field(default=1000, ge=1)
    eta: float = Field(default=0.0, ge=0, le=1)
    #: Start from pure noise (the paper) or from the source noised to ``start_t`` (a fraction of T).
    start: Literal["noise", "source"] = "noise"
    start_t: float = Field(default=1.0, gt=0, le=1)
    samples: int = Field(default=1, ge=1)
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
    #: ``ancestral`` (the reference) or ``ddim`` with ``steps`` steps from t0 to 0.
    kind: Literal["ancestral", "ddim"] = "ancestral"
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=16, ge=1)


class CycleGanParams(Section):
    source_fraction: float = Field(default=0.11, gt=0, le=1)
    res_blocks: int = Field(default=6, ge=1)
    base_filters: int = Field(default=64, ge=4)
    disc_filters: int = Field(default=64, ge=4)
    disc_layers: int = Field(default=3, ge=1)
    lambda_cycle: float = Field(default=10.0, ge=0)
    lambda_identity: float = Field(default=0.5, ge=0)
    pool_size: int = Field(default=50, ge=0)
    train: TrainParams = TrainParams(steps=1000, batch_size=1, lr=2e-4)
    #: Fraction of steps at constant learning rate before the linear decay to 0.
    constant_fraction: float = Field(default=0.5, ge=0, le=1)
    beta1: float = Field(default=0.5, ge=0, lt=1)


class StyleGan2Params(Section):
    z_dim: int = Field(default=128, ge=8)
    w_dim: int = Field(default=128, ge=8)
    mapping_layers: int = Field(default=4, ge=1)
    channels: int = Field(default=128, ge=8)
    r1_gamma: float = Field(default=1.0, ge=0)
    r1_every: int = Field(default=16, ge=1)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    ada_target: float = Field(default=0.6, gt=0, lt=1)
    ada_interval: int = Field(default=4, ge=1)
    ada_kimg: float = Field(default=100.0, gt=0)
    train: TrainParams = TrainParams(steps=1000, batch_size=8, lr=2e-3)
    invert_steps: int = Field(default=1000, ge=1)
    invert_lr: float = Field(default=0.1, gt=0)
    invert_w_samples: int = Field(default=10000, ge=1)
    invert_noise_weight: float = Field(default=1e5, ge=0)


class CdmParams(Section):
    vector_dim: int = Field(default=192, ge=4)
    mask_ratio: float = Field(default=0.5, gt=0, lt=1)
    patch: int = Field(default=8, ge=2)
    mdn_blocks: int = Field(default=4, ge=1)
    mdn_hidden: int = Field(default=512, ge=8)
    mdn_timesteps: int = Field(default=1000, ge=2)
    mdn_ddim_steps: int = Field(default=50, ge=1)
    unet_channels: tuple[int, ...] = (64, 128, 256)
    mrm: TrainParams = TrainParams(steps=1000, batch_size=8, lr=1e-4)
    mdn: TrainParams = TrainParams(steps=1000, batch_size=32, lr=1e-4)
    unet: TrainParams = TrainParams(steps=1000, batch_size=8, lr=1e-4)


class HistMatchParams(Section):
    n_quantiles: int = Field(default=256, ge=8)


class TranslateParams(Section):
    #: The test split is translated in this many independent jobs per method (Slurm jobs).
    shards: int = Field(default=2, ge=1)


# ---------------------------------------------------------------------------------- evaluation
class SegmentParams(Section):
    #: K-Means clusters inside the brain mask, mapped to CSF < GM < WM by T1 centroid intensity.
    n_clusters: int = Field(default=3, ge=2, le=10)
    #: Training voxels sampled for fitting (0 = all).
    max_voxels: int = Field(default=200_000, ge=0)


class EvaluateParams(Section):
    bootstrap: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    #: The method every other one is compared against (paired Wilcoxon signed-rank test).
    reference_method: MethodName = "lmidiffusion"
    #: Sampler table: LMIDiffusion settings ``<kind>-<steps>`` run on ``sampler_slices`` validation slices.
    sampler_settings: list[str] = ["ancestral-1000", "ddim-100", "ddim-50", "ddim-25", "ddim-10"]
    sampler_slices: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _settings(self):
        import re

        for s in self.sampler_settings:
            if not re.fullmatch(r"(ancestral|ddim)-[1-9][0-9]*", s):
                raise ValueError(f"sampler_settings: {s!r} is not '<ancestral|ddim>-<steps>'")
        return self


class ReportParams(Section):
    #: Test slices shown in the qualitative grid.
    grid_slices: int = Field(default=4, ge=1)
    title: str = "LMIDiffusion: zero-shot PD → T1 translation and segmentation"


# -------------------------------------------------------------------------------------- root
class Params(Section):
    seed: int = Field(default=1234, ge=0)
    preset: Literal["demo", "paper", "test"] = "demo"
    methods: list[MethodName] = list(METHOD_NAMES)
    data: DataParams = DataParams()
    simulate: SimulateParams = SimulateParams()
    prepare: PrepareParams = PrepareParams()
    lmi: LmiParams = LmiParams()
    diffusion: DiffusionParams = DiffusionParams()
    lmidiffusion: LmiDiffusionParams = LmiDiffusionParams()
    sdedit: SdeditParams = SdeditParams()
    cyclegan: CycleGanParams = CycleGanParams()
    stylegan2: StyleGan2Params = StyleGan2Params()
    cdm: CdmParams = CdmParams()
    histmatch: HistMatchParams = HistMatchParams()
    translate: TranslateParams = TranslateParams()
    segment: SegmentParams = SegmentParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods lists a method twice")
        if self.data.source_modality == self.data.target_modality:
            raise ValueError("data.source_modality and data.target_modality must differ")
        return self


def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelt?)"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {e.get('input')!r}"
        lines.append(f"{path}: {key}: {msg}")
    return "\n".join(lines)


def parse_params(data: dict, path: str | Path = "params.yaml") -> Params:
    """Validate an already-parsed mapping (used by the loader and by Snakemake's config)."""
    path = Path(path)
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format_validation_error(path, err)) from None


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Read, validate and fill defaults. ``overrides`` are deep-merged on top (tests, presets)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if overrides:
        data = deep_merge(data, overrides)
    return parse_params(data, path)


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
