"""The report's figure set: for each figure, its data (:mod:`.figdata`), its PNG (:mod:`.figures`)
and its title and caption (:mod:`.captions`), in the order the page shows them."""

from __future__ import annotations

from pathlib import Path

from lmid.evaluation.display import DISPLAY
from lmid.experiments import is_unseen_experiment
from lmid.report import captions, figdata, figures
from lmid.report.captions import FIGURE_FILES
from lmid.report.figdata import Missing


class Figures:
    """Draws what the inputs allow; records (id, title, path, caption) or why a figure is missing."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.items: list[dict] = []

    def add(self, fid: str, title: str, path: Path, caption: str, missing: str = "") -> None:
        """Record a drawn figure, or (``missing`` = why) write a placeholder PNG in its place so the set of
        figure files is always the same (Snakemake can declare each of them)."""
        if missing:
            figures.placeholder(path, title, f"Not available: {missing}.")
        self.items.append({"id": fid, "title": title, "path": path, "caption": caption, "missing": missing})

    def make(self, fid: str, name: str, title: str, draw, experiment: str = "") -> None:
        """``draw(path)`` draws the figure and returns its caption, or raises :class:`Missing`."""
        path = self.out_dir / FIGURE_FILES[name].format(experiment=experiment)
        try:
            caption = draw(path)
        except Missing as why:
            self.add(fid, title, path, "", str(why))
            return
        self.add(fid, title, path, caption)


def draw_figures(
    params,
    summary: dict,
    split,
    translations: dict,
    metrics_dir: Path,
    models_dir: Path,
    fig_dir: Path,
    diagnostics: dict | None = None,
    unseen_split=None,
    baselines: dict | None = None,
    baseline_images: dict | None = None,
) -> Figures:
    """Every figure of the report, in the order the page shows them."""
    figs = Figures(fig_dir)
    main = summary["main_experiment"]
    s_main = summary["experiments"][main]
    trs_main = translations.get(main, {})
    src, tgt = params.data.source_modality, params.data.target_modality

    for exp, s in summary["experiments"].items():
        # An unseen-protocol experiment's sources and targets are its own slices, not the main split's.
        own = unseen_split if is_unseen_experiment(exp, params) else split

        def grid(path, s=s, own=own, trs=translations.get(exp, {})):
            d = figdata.grid_data(params, s, own, trs)
            figures.qualitative_grid(
                path,
                d["source"],
                d["target"],
                d["translations"],
                DISPLAY,
                d["labels"],
                s["source_modality"],
                s["target_modality"],
            )
            return captions.grid(d["n"], s["source_modality"], s["target_modality"])

        figs.make(f"grid-{exp}", "grid", captions.title("grid", s["source_modality"], s["target_modality"]), grid, exp)

    def segmentation(path):
        d = figdata.segmentation_data(params, split, trs_main, s_main, models_dir)
        figures.segmentation_overlays(path, d["target"], d["columns"], d["labels"])
        return captions.segmentation(d["k"], tgt, d["has_label"])

    figs.make("segmentation", "segmentation", captions.title("segmentation"), segmentation)

    for exp, s in summary["experiments"].items():

        def metrics(path, exp=exp, s=s):
            d = figdata.metrics_data(exp, s, metrics_dir)
            figures.metric_distributions(path, d["values"], DISPLAY, d["panels"], seed=params.seed)
            return captions.metrics(d["dice_gt"], s["target_modality"])

        figs.make(
            f"metrics-{exp}",
            "metrics",
            captions.title("metrics", s["source_modality"], s["target_modality"]),
            metrics,
            exp,
        )

    def lmi(path):
        d = figdata.lmi_data(params, split, trs_main)
        figures.lmi_maps(path, d["rows"])
        return captions.lmi(d["slice"], src, tgt, d["method"], params.lmi, d["intermediates"])

    figs.make("lmi", "lmi", captions.title("lmi"), lmi)

    def loss_curves(path):
        figures.loss_curves(path, figdata.loss_logs(params, models_dir), DISPLAY)
        return captions.loss_curves()

    figs.make("loss_curves", "loss_curves", captions.title("loss_curves"), loss_curves)

    def uncertainty(path):
        d = figdata.uncertainty_data(params, split, trs_main)
        figures.uncertainty_maps(path, d["columns"], d["labels"])
        return captions.uncertainty()

    figs.make("uncertainty", "uncertainty", captions.title("uncertainty"), uncertainty)

    def sampler(path):
        sweep = summary.get("sampler", {})
        if sweep.get("status") != "ok":
            raise Missing("sampler sweep not run")
        figures.sampler_tradeoff(path, sweep["settings"])
        return captions.sampler()

    figs.make("sampler", "sampler", captions.title("sampler"), sampler)

    def convergence(path):
        d = figdata.convergence_data(diagnostics)
        figures.convergence_curve(path, d["curve"])
        return captions.convergence(d["slices"], src, tgt)

    figs.make("convergence", "convergence", captions.title("convergence"), convergence)

    def conditioning(path):
        d = figdata.conditioning_data(diagnostics)
        figures.conditioning_shift(path, d["shift"], d["contrast"])
        return captions.conditioning(d["slices"], tgt)

    figs.make("conditioning", "conditioning", captions.title("conditioning"), conditioning)

    def baseline_samples(path):
        figures.sample_rows(path, figdata.baseline_rows(baselines, baseline_images))
        return captions.baselines()

    figs.make("baselines", "baselines", captions.title("baselines"), baseline_samples)

    def compute(path):
        d = figdata.compute_data(diagnostics, baselines, models_dir)
        figures.compute_curves(path, d["series"], DISPLAY)
        return captions.compute(d["slices"], d["estimated"])

    figs.make("compute", "compute", captions.title("compute"), compute)
    return figs
