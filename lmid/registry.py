"""The one list of methods and everything the pipeline needs to know about each.

Adding a method means one :class:`MethodSpec` here, one :class:`lmid.methods.base.Method`
subclass of the same name in ``module`` and its import in :func:`lmid.methods.method_class`
(tests/test_access.py checks the three agree). Everything else (the ``methods`` choices of params.yaml, the CLI's
``--method``, what reruns in Snakemake and DVC, the training fingerprint, column names, colours
and GPU requests) is read from this table. The source files a method's steps depend on are not
listed: workflow/scripts/dvc_yaml.py follows the imports of each step's command.

Parameters are named by dotted keys of params.yaml (``diffusion.train.steps``). A method's
``train_keys`` are what its training reads: change one and the train step runs again. Of those,
``resume_keys`` do not change the weights a checkpoint holds (how long training runs, what it
keeps along the way, SDEdit's t0 sweep after it), so a checkpoint made under other values of them
is resumed (train 2,000 steps, then on to 6,000), and ``bookkeeping_keys`` neither change the
result nor rerun anything. ``translate_keys`` are read at
translation time only: changing one re-translates but never retrains.

This module imports nothing heavy: the Snakefile and the params loader read it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Access(enum.Enum):
    """What training data a method may see (enforced by ``Method.training_data``)."""

    #: Target-modality training slices only (lmidiffusion, sdedit, stylegan2; synthseg, whose
    #: training labels are the K-Means segmentation of those slices, the evaluation's segmenter).
    TARGET_ONLY = "target training slices only"
    #: Unpaired target slices plus a fraction of the training subjects' source slices (cyclegan).
    TARGET_AND_SOURCE_FRACTION = "unpaired target slices + a fraction of the training subjects' source slices"
    #: Paired source/target training slices (cdm: supervised upper bound).
    PAIRED = "paired source/target training slices (supervised)"
    #: Target training intensities only, no learning beyond a histogram (histmatch).
    TARGET_HISTOGRAM = "target training intensities (histogram) only"
    #: Nothing at all (identity).
    NONE = "nothing"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    #: Column name in tables and figures.
    display: str
    #: Module that defines the ``Method`` subclass (imported only when the method is used).
    module: str
    access: Access
    #: Colour in every figure.
    colour: str
    #: One of the methods the paper's table compares (the best of them is bold).
    competitor: bool
    #: Trains or samples a network, so its jobs ask the cluster for a GPU.
    gpu: bool
    train_keys: tuple[str, ...] = ()
    resume_keys: tuple[str, ...] = ()
    bookkeeping_keys: tuple[str, ...] = ()
    translate_keys: tuple[str, ...] = ()
    #: What the column is, under its name in the tables ("" for the zero-shot methods);
    #: ``{source_fraction}`` is filled in from ``cyclegan.source_fraction``.
    role: str = ""
    #: Keeps training snapshots that ``lmid check-baselines`` scores on validation slices (and, for
    #: the generators, inspects on their own).
    baseline_checked: bool = False
    #: Segments the source slice itself instead of translating it: its ``Translation.labels`` are
    #: scored (inside the test slice's brain mask, as K-Means is applied), PSNR and SSIM do not apply.
    segments: bool = False
    #: Scheduling order of the train jobs (higher first): the longest trainings start first, so
    #: that shorter jobs fill the other cores around them.
    train_priority: int = 0

    @property
    def fingerprint_keys(self) -> tuple[str, ...]:
        """Training keys a resumable checkpoint must agree on."""
        return tuple(k for k in self.train_keys if k not in self.resume_keys + self.bookkeeping_keys)

    @property
    def rerun_train_keys(self) -> tuple[str, ...]:
        """Training keys whose change reruns the train step (resuming where the fingerprint allows)."""
        return tuple(k for k in self.train_keys if k not in self.bookkeeping_keys)


_DIFFUSION_TRAIN = ("seed", "diffusion.schedule", "diffusion.unet", "diffusion.train")
_DIFFUSION_RESUMABLE = ("diffusion.train.steps", "diffusion.train.snapshot_every")
_DIFFUSION_BOOKKEEPING = (
    "diffusion.train.checkpoint_every",
    "diffusion.train.log_every",
    "diffusion.train.cache_self_lmi",
)


def _gan_bookkeeping(section: str, *train_groups: str) -> tuple[str, ...]:
    return tuple(f"{section}.{g}.{k}" for g in train_groups for k in ("checkpoint_every", "log_every"))


_SPECS = (
    MethodSpec(
        "cyclegan",
        "CycleGAN",
        "lmid.methods.cyclegan",
        Access.TARGET_AND_SOURCE_FRACTION,
        "#239b56",
        competitor=True,
        gpu=True,
        baseline_checked=True,
        role="sees {source_fraction} source",
        train_keys=("seed", "cyclegan"),
        bookkeeping_keys=_gan_bookkeeping("cyclegan", "train"),
        resume_keys=("cyclegan.train.snapshot_every",),
    ),
    MethodSpec(
        "stylegan2",
        "StyleGAN2-ADA",
        "lmid.methods.stylegan2",
        Access.TARGET_ONLY,
        "#7d3c98",
        competitor=True,
        gpu=True,
        baseline_checked=True,
        train_keys=tuple(
            f"stylegan2.{k}"
            for k in (
                "z_dim",
                "w_dim",
                "mapping_layers",
                "channels",
                "channel_base",
                "r1_gamma",
                "r1_every",
                "ema_decay",
                "ada_target",
                "ada_interval",
                "ada_kimg",
                "train",
            )
        )
        + ("seed",),
        resume_keys=("stylegan2.train.snapshot_every",),
        bookkeeping_keys=_gan_bookkeeping("stylegan2", "train"),
        # GAN inversion happens per test slice; its loss may use the LMI layer's settings.
        translate_keys=("seed", "lmi")
        + tuple(
            f"stylegan2.{k}"
            for k in (
                "invert_steps",
                "invert_lr",
                "invert_w_samples",
                "invert_noise_weight",
                "invert_loss",
                "invert_hist_weight",
            )
        ),
    ),
    MethodSpec(
        "sdedit",
        "SDEdit",
        "lmid.methods.sdedit",
        Access.TARGET_ONLY,
        "#2471a3",
        competitor=True,
        gpu=True,
        baseline_checked=True,
        # The t0 sweep on validation slices runs at the end of training, so it is part of it; it
        # never changes the DDPM's weights, so a checkpoint made under another sweep is resumed.
        train_priority=1,
        train_keys=_DIFFUSION_TRAIN + ("sdedit",),
        resume_keys=_DIFFUSION_RESUMABLE + ("sdedit",),
        bookkeeping_keys=_DIFFUSION_BOOKKEEPING,
        translate_keys=(
            "seed",
            "sdedit.kind",
            "sdedit.steps",
            "sdedit.repeats",
            "sdedit.batch_size",
            "diffusion.train.mixed_precision",
        ),
    ),
    MethodSpec(
        "lmidiffusion",
        "LMIDiffusion",
        "lmid.methods.lmidiffusion",
        Access.TARGET_ONLY,
        "#c0392b",
        competitor=True,
        gpu=True,
        train_priority=2,
        train_keys=_DIFFUSION_TRAIN + ("lmi",),
        resume_keys=_DIFFUSION_RESUMABLE,
        bookkeeping_keys=_DIFFUSION_BOOKKEEPING,
        translate_keys=("seed", "lmi", "lmidiffusion.sampler", "diffusion.train.mixed_precision"),
    ),
    MethodSpec(
        "cdm",
        "CDM",
        "lmid.methods.cdm",
        Access.PAIRED,
        "#b9770e",
        competitor=False,
        gpu=True,
        role="supervised upper bound",
        train_keys=("seed",)
        + tuple(
            f"cdm.{k}"
            for k in (
                "vector_dim",
                "mask_ratio",
                "patch",
                "mrm_channels",
                "mdn_blocks",
                "mdn_hidden",
                "mdn_timesteps",
                "unet_channels",
                "flip_prob",
                "grad_clip",
                "mrm",
                "mdn",
                "unet",
            )
        ),
        bookkeeping_keys=_gan_bookkeeping("cdm", "mrm", "mdn", "unet"),
        translate_keys=("seed", "cdm.mdn_ddim_steps", "cdm.translate_batch_size"),
    ),
    MethodSpec(
        "synthseg",
        "SynthSeg-style",
        "lmid.methods.synthseg",
        Access.TARGET_ONLY,
        "#17a589",
        competitor=False,
        gpu=True,
        baseline_checked=True,
        segments=True,
        role="segmentation reference: translates nothing",
        # Training re-fits the evaluation's K-Means (``segment``, ``seed``) on the target slices for
        # its labels, and normalises its synthetic images as prepare does (``prepare.percentiles``).
        train_keys=("seed", "segment", "prepare.percentiles")
        + tuple(f"synthseg.{k}" for k in ("channels", "num_res_units", "dropout", "synthesis", "train")),
        resume_keys=("synthseg.train.steps", "synthseg.train.snapshot_every"),
        bookkeeping_keys=_gan_bookkeeping("synthseg", "train"),
        translate_keys=("synthseg.translate_batch_size",),
    ),
    MethodSpec(
        "identity",
        "Identity",
        "lmid.methods.references",
        Access.NONE,
        "#717d7e",
        competitor=False,
        gpu=False,
        role="reference",
    ),
    MethodSpec(
        "histmatch",
        "Hist. matching",
        "lmid.methods.references",
        Access.TARGET_HISTOGRAM,
        "#a6acaf",
        competitor=False,
        gpu=False,
        role="reference",
        train_keys=("histmatch.n_quantiles",),
        translate_keys=("histmatch.mask_threshold",),
    ),
)

#: Every method by name, in the tables' column order (the paper's four, the upper bound, the
#: segmentation reference, the translation references).
METHODS: dict[str, MethodSpec] = {s.name: s for s in _SPECS}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


#: What LMIDiffusion's sampler sweep reads besides the weights and the setting: the sampler rule's
#: rerun trigger, and what a published sweep must have been scored under to be reused.
SWEEP_KEYS = (
    *METHODS["lmidiffusion"].translate_keys,
    "evaluate.sampler_slices",
    "evaluate.sampler_chains",
    "data",
    "segment",
)


def spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        from lmid.errors import ParamsError

        raise ParamsError(f"unknown method {name!r}; choose from {list(METHOD_NAMES)}") from None


def dotted_get(tree: dict, key: str):
    """``tree["a"]["b"]`` for ``key`` ``"a.b"``."""
    node = tree
    for part in key.split("."):
        node = node[part]
    return node


def key_values(tree: dict, keys, exclude=()) -> dict:
    """``{key: value}`` for dotted ``keys`` of a params tree, without the ``exclude`` keys.

    A key with an excluded key inside it is split into its children, so every key returned names
    exactly what it covers (``diffusion.train`` less ``diffusion.train.log_every`` becomes
    ``diffusion.train.batch_size``, ``diffusion.train.lr``, ...).
    """
    out = {}
    for key in keys:
        if any(key == ex or key.startswith(ex + ".") for ex in exclude):
            continue
        value = dotted_get(tree, key)
        if isinstance(value, dict) and any(ex.startswith(key + ".") for ex in exclude):
            out.update(key_values(tree, [f"{key}.{child}" for child in value], exclude))
        else:
            out[key] = value
    return out
