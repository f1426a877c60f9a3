"""Every figure's title and caption, written once.

The HTML report fills them in with the run's values (slice counts, modalities, LMI settings, ...).
Snakemake's report (``snakemake --report``) needs static captions, ``workflow/report/<name>.rst``;
those files are generated from the same functions called without values, which then describe the
general case and name the parameters in RST literals: ``write_rst_captions("workflow/report")``
(tests/test_report.py checks that the committed files are what this module writes).

A caption function takes keyword values; ``None`` means "not known here" (the RST case).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

#: Figure file names (under <reports-dir>/figures/); the keys are the caption names in workflow/report/.
FIGURE_FILES = {
    "grid": "grid_{experiment}.png",
    "segmentation": "segmentation.png",
    "metrics": "metrics_{experiment}.png",
    "lmi": "lmi.png",
    "loss_curves": "loss_curves.png",
    "uncertainty": "uncertainty.png",
    "sampler": "sampler.png",
    "convergence": "convergence.png",
    "conditioning": "conditioning.png",
    "baselines": "baselines.png",
    "compute": "compute.png",
}


def figure_files(experiments) -> dict[str, list[str]]:
    """Figure name -> the files ``lmid report`` writes for it (under its reports folder) for a run
    of these experiments: every figure of :data:`FIGURE_FILES`, drawn or a placeholder, once per
    experiment where its name has ``{experiment}``. The report rule declares exactly these."""
    return {
        name: list(dict.fromkeys(f"figures/{pattern.format(experiment=e)}" for e in experiments))
        for name, pattern in FIGURE_FILES.items()
    }


#: The section of ``snakemake --report`` each figure goes in.
FIGURE_CATEGORIES = {
    "grid": "Translations",
    "segmentation": "Segmentation",
    "metrics": "Metrics",
    "lmi": "LMI conditioning",
    "loss_curves": "Training",
    "uncertainty": "Translations",
    "sampler": "Sampler",
    "convergence": "Training",
    "conditioning": "LMI conditioning",
    "baselines": "Training",
    "compute": "Training",
}


def _lit(text: str, rst: bool) -> str:
    return f"``{text}``" if rst else text


def _or(value, generic: str) -> str:
    return generic if value is None else str(value)


def _the(modality: str | None, noun: str) -> str:
    """ "the PD source", or "the source" when the modality is not known."""
    return f"the {noun}" if modality is None else f"the {modality} {noun}"


# ------------------------------------------------------------------------------------ titles
def title(name: str, src: str | None = None, tgt: str | None = None) -> str:
    """The heading of figure ``name`` (source and target modality where the figure has them)."""
    pair = f"{_or(src, 'source')} → {_or(tgt, 'target')}"
    return {
        "grid": f"Qualitative comparison, {pair}",
        "segmentation": "K-Means segmentations",
        "metrics": f"Per-slice scores, {pair}",
        "lmi": "Local mutual information maps",
        "loss_curves": "Training losses",
        "uncertainty": "Uncertainty over samples",
        "sampler": "LMIDiffusion: quality against sampling time",
        "convergence": "LMIDiffusion convergence on validation slices",
        "conditioning": "LMIDiffusion: conditioning at translation time against training",
        "baselines": "Baselines on their own: random samples and the reverse direction",
        "compute": "Quality against training compute",
    }[name]


# ---------------------------------------------------------------------------------- captions
def grid(n: int | None = None, src: str | None = None, tgt: str | None = None, rst: bool = False) -> str:
    # The grid draws each translation's "image": chain 0, the sample the tables score
    # (lmid/diffusion/model.py: translate_batched), not the mean over samples.
    return (
        f"{_or(n, _lit('report.grid_slices', rst))} test slices (rows: spread over the half of the split with "
        "the most brain; subject and axial index on the left). "
        f"Columns: {_the(src, 'source')}, every method's translation (its first sample where it drew "
        f"several: the one the tables score), the real registered {_or(tgt, 'target')} slice. All images on "
        "[0, 1], same grey scale. The SynthSeg-style reference translates nothing and has no column here."
    )


def segmentation(k: int | None = None, tgt: str | None = None, has_label: bool | None = None, rst: bool = False) -> str:
    tgt = _or(tgt, "target")
    first = {
        True: "The first column is the ground truth. ",
        False: "",
        None: "The first column is the ground truth when the data has labels (simulated and BraTS-style data "
        "do, IXI does not). ",
    }[has_label]
    return (
        f"The target-only K-Means segmenter (K = {_or(k, _lit('segment.n_clusters', rst))}, fitted on {tgt} "
        f"training slices) applied unchanged to each translation and to the real {tgt} slice, inside the test "
        f"slice's brain mask. {first}The SynthSeg-style reference's column shows its own labels of the source "
        "slice, in the same mask. CSF blue, GM orange, WM red."
    )


def metrics(dice_gt: bool | None = None, tgt: str | None = None, rst: bool = False) -> str:
    tgt = _or(tgt, "target")
    against = {
        True: "against the ground-truth labels",
        False: f"against K-Means of the real {tgt} slice",
        None: f"against the ground-truth labels when the data has them, else against K-Means of the real {tgt} slice",
    }[dice_gt]
    return (
        "Each point is one test slice; boxes show the median and quartiles (whiskers 1.5 IQR). "
        f"Dice is the per-slice mean over CSF, GM and WM, {against}; PSNR and SSIM compare the whole slice with "
        f"the real {tgt} slice, both on [0, 1]. The SynthSeg-style reference translates nothing, so it has no "
        "PSNR or SSIM."
    )


def lmi(
    slice_name: str | None = None,
    src: str | None = None,
    tgt: str | None = None,
    method: str | None = None,
    lmi_params=None,
    intermediates: bool | None = None,
    rst: bool = False,
) -> str:
    """``method``: display name of the translation shown as x (None: generic; "" : no translation)."""
    tgt = _or(tgt, "target")
    where = f"Test slice {slice_name}." if slice_name is not None else "One test slice."
    x = {None: "the translation x (LMIDiffusion's when it ran)", "": "no translation"}.get(
        method, f"the {method} translation x"
    )
    if lmi_params is None:
        how = f"the {_lit('lmi', rst)} parameters: mode, window, bins, σ"
    else:
        lp = lmi_params
        how = f"{lp.mode} mode, window {lp.window}, {lp.bins} bins, σ = {lp.sigma:g}"
    # Rows 2 and 3 (noised y and s) are always drawn; a fourth row only when translations.npz has intermediates.
    last = {
        True: " The last row is LMI(s, x_t) for the sampler's own intermediates x_t.",
        False: " The translations carry no sampler intermediates, so there is no row for the sampler's own x_t.",
        None: " When the translations carry the sampler's own intermediates x_t, a last row shows LMI(s, x_t) "
        "for them.",
    }[intermediates]
    return (
        f"{where} Top: {_the(src, 'source')} s, the real {tgt} slice y and {x}, then the self-LMI of the source "
        "(the fixed conditioning channel) and the cross-LMI with y and with x. The next two rows illustrate "
        "what the sampler sees at t = 0, 0.1T, 0.25T, 0.5T, 0.75T and T − 1: LMI(s, x_t) with "
        f"x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε for x₀ the real {tgt} slice (an ideal trajectory) and for x₀ the source "
        f"itself (the start of SDEdit or a source-started sampler), one fixed ε, not clipped.{last} "
        f"LMI computed with lmid.lmi ({how}); each row has its own colour scale. At large t, noisy values leave "
        "[0, 1] and the estimator's kernels underflow, which drives the map towards 2."
    )


def loss_curves(rst: bool = False) -> str:
    return (
        f"Every loss column of each method's {_lit('train_log.csv', rst)} against the training step (faint: "
        "logged values; solid: exponential moving average). CDM's three stages (MRM, MDN, C-UNet) are "
        "separate curves. Methods without training (identity) or without losses (histogram matching) are not "
        "shown."
    )


def uncertainty(rst: bool = False) -> str:
    return (
        "For methods that drew several samples per slice (LMIDiffusion with "
        f"{_lit('lmidiffusion.sampler.samples', rst)} > 1): the mean over the samples and the per-pixel standard "
        "deviation, on one colour scale. The tables score one sample per slice (the first), not this mean, "
        "which is blurrier than any sample."
    )


def sampler(rst: bool = False) -> str:
    return (
        f"Dice, PSNR and SSIM of LMIDiffusion for each sampler setting ({_lit('evaluate.sampler_settings', rst)}; "
        "ddim-N: N DDIM steps, ancestral-N: N ancestral steps): mean ± std over the sweep's validation slices, "
        "one sample each, against wall-clock seconds per slice on the machine that translated (circles DDIM, "
        "squares ancestral)."
    )


def convergence(n: int | None = None, src: str | None = None, tgt: str | None = None, rst: bool = False) -> str:
    return (
        f"{_or(src, 'Source')} → {_or(tgt, 'target')} translation of {_or(n, 'the')} validation slices (spread "
        f"over every validation subject) with the EMA weights kept every {_lit('diffusion.train.snapshot_every', rst)} "
        "steps, scored like the test set (one sample per slice, the run's sampler): Dice, SSIM, PSNR and tissue "
        "contrast against the training step, with the subject-level confidence band; dashed, the oracle (the "
        f"real {_or(tgt, 'target')} as its own source). A score counts as converged when the last third of training "
        "moved it by less than its band's half-width (the verdict table below)."
    )


def conditioning(n: int | None = None, tgt: str | None = None, rst: bool = False) -> str:
    return (
        f"Left: in-brain LMI on {_or(n, 'a few')} validation slices. Training shows the network LMI(x_0, x_0) "
        "and LMI(x_0, x_{t+1}) of clean target slices; translation shows it LMI(s, s) and LMI(s, x_t) of the "
        "source s and the sampled x_t (here at t ≤ 50, where the map carries the anatomy). A source whose boxes "
        "sit far from training's gives the network inputs it never learnt from. Right: per-slice Dice of the "
        "translation against the source's own tissue contrast, per source modality."
    )


def baselines(rst: bool = False) -> str:
    return (
        "Top: real target slices drawn at random. Then random samples of StyleGAN2-ADA's EMA generator "
        "(no inversion) and unconditional samples of SDEdit's DDPM, which should look like brains of the "
        "target modality; CycleGAN's reverse generator on the same real slices should look like the source. "
        f"Numbers in the Baseline checks section of the HTML report ({_lit('lmid check-baselines', rst)})."
    )


def compute(n: int | None = None, estimated: list[str] | None = None, rst: bool = False) -> str:
    text = (
        f"Validation Dice (against the ground truth) and in-brain SSIM of each method's translation of {_or(n, 'the')} "
        f"diagnostic validation slices ({_lit('evaluate.diagnostic_slices', rst)}) at each of its training snapshots "
        f"({_lit('<method>.train.snapshot_every', rst)}), against the CPU-hours its training loop had spent, with the "
        "subject-level confidence band: who is ahead at equal compute, and who is still rising. CDM keeps no "
        "snapshots of its three stages and is left out. The SynthSeg-style reference's Dice scores its own labels "
        "of the source slices; it translates nothing, so it has no SSIM."
    )
    if estimated:
        text += (
            f" For {', '.join(estimated)}, whose snapshots predate the training clock, the x axis is the "
            "training loop's wall time prorated by step (one thread)."
        )
    return text


CAPTIONS = {
    "grid": grid,
    "segmentation": segmentation,
    "metrics": metrics,
    "lmi": lmi,
    "loss_curves": loss_curves,
    "uncertainty": uncertainty,
    "sampler": sampler,
    "convergence": convergence,
    "conditioning": conditioning,
    "baselines": baselines,
    "compute": compute,
}

#: workflow/report/workflow.rst: the Snakemake report's front page (not a figure caption).
WORKFLOW = """\
**lmid**: zero-shot PD → T1 MRI translation and segmentation (LMIDiffusion and baselines).

The workflow prepares axial slices (simulated multi-contrast brains by default, or IXI /
BraTS-style folders) and splits them by subject into train / validation / test. Each method
trains on what it is allowed to see: LMIDiffusion, SDEdit and StyleGAN2-ADA on T1 slices only;
CycleGAN on T1 slices plus 11 % of the source slices (not zero-shot); CDM on paired slices (a
supervised upper bound); identity and histogram matching are references. Every method then
translates the test split's PD slices (experiment ``pd2t1``) and, zero-shot, its T2 slices
(``t22t1``), in shards. The SynthSeg-style reference asks whether translation is needed at all: a
U-Net trained on images of random contrast synthesised from the K-Means labels of the T1 training
slices segments the source slices directly and is scored on its own labels.

A K-Means segmenter fitted only on T1 training intensities segments every translation and the
real T1 slice. ``lmid evaluate`` scores each translated slice (Dice per tissue against the ground
truth and against K-Means of the real T1, PSNR and SSIM against the real T1 on [0, 1]),
``lmid aggregate`` builds the paper's table with the paper's own numbers beside ours, 95 %
bootstrap confidence intervals and paired Wilcoxon tests (``reports/tables/``,
``reports/metrics.json``), and ``lmid report`` draws the figures and writes the self-contained
``reports/index.html`` with the parameters, data description, protocol choices, software versions
and timings.
"""

_HEADER = ".. Generated by lmid.report.captions.write_rst_captions; edit lmid/report/captions.py instead.\n\n"


def rst_caption(name: str) -> str:
    """The static caption of figure ``name`` for Snakemake's report."""
    path = f"reports/figures/{FIGURE_FILES[name].replace('{experiment}', '<experiment>')}"
    text = f"{title(name)} (``{path}``). {CAPTIONS[name](rst=True)}"
    return _HEADER + textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False) + "\n"


def rst_files() -> dict[str, str]:
    """File name → content of every file in workflow/report/."""
    files = {f"{name}.rst": rst_caption(name) for name in CAPTIONS}
    files["workflow.rst"] = _HEADER + WORKFLOW
    return files


def write_rst_captions(folder) -> list[Path]:
    """Write workflow/report/*.rst (Snakemake's captions) from this module; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in rst_files().items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out
