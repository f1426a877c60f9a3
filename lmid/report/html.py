"""``lmid report``: the figures and one self-contained HTML page.

The page embeds its PNG figures as base64 ``data:`` URIs and its CSS inline; it references
nothing outside itself (no fonts, scripts or links), so it can be mailed or opened offline. Apart
from the generation timestamp the same inputs give the same file.

Inputs: ``<reports-dir>/summary.json`` (from ``lmid aggregate``, required), the test split and
manifest, every method's translations, per-slice metrics, ``train_log.csv`` and
``train_info.json``, and the K-Means segmenter. Anything optional that is missing becomes a
"not run" note instead of an error.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
from pathlib import Path

import numpy as np

from lmid.errors import InputFileError, LmidError
from lmid.evaluation.aggregate import (DISPLAY, PAPER, PAPER_LABEL, ROWS, best_method, column_title, fmt, fmt_p,
                                      is_unseen_experiment, method_order, method_stats, plain, protocol_description,
                                      role, smallest_nfe_sentence)
from lmid.evaluation.metrics import read_metrics_csv
from lmid.io import load_npz, read_json, write_text
from lmid.report import environment, figures

log = logging.getLogger(__name__)

#: Figure file names (under <reports-dir>/figures/) and their captions in workflow/report/.
FIGURE_FILES = {
    "grid": "grid_{experiment}.png", "segmentation": "segmentation.png", "metrics": "metrics_{experiment}.png",
    "lmi": "lmi.png", "loss_curves": "loss_curves.png", "uncertainty": "uncertainty.png", "sampler": "sampler.png",
    "convergence": "convergence.png", "baselines": "baselines.png",
}


def _preset_notice(params) -> str:
    """The demo and test presets train every network for minutes on a CPU: say so first."""
    if params.preset == "paper":
        return ""
    if params.preset == "study":
        steps = params.diffusion.train.steps
        return ("<p class=\"notice\"><strong>Preset <code>study</code>:</strong> the comparison trained on a CPU at "
                f"64 px ({steps:,} diffusion steps at batch {params.diffusion.train.batch_size}, against the authors' "
                "750,000). Whether that is enough is measured, not assumed: see the convergence curve and the "
                "conditioning ablation under Diagnostics.</p>")
    return ("<p class=\"notice\"><strong>Preset "
            f"<code>{esc(params.preset)}</code>:</strong> every network here was trained for a few minutes at most on "
            "a CPU, so the diffusion models are far from converged. These numbers show that every step of the "
            "pipeline runs end to end; they are not a reproduction of the paper's quality. Run the paper preset "
            "(<code>workflow/presets/paper.yaml</code>) on a GPU for that.</p>")


def esc(x) -> str:
    return html.escape(str(x), quote=True)


# ------------------------------------------------------------------------------------ loading
def _load_translations(translations_dir: Path, experiments: list[str], methods_by_exp: dict) -> dict:
    out: dict = {}
    for exp in experiments:
        out[exp] = {}
        for m in methods_by_exp.get(exp, []):
            path = translations_dir / exp / m / "translations.npz"
            if path.is_file():
                out[exp][m] = load_npz(path, ("image", "index"))
            else:
                log.warning("%s: not found; %s left out of the %s figures", path, m, exp)
    return out


def _load_split(path: Path):
    from lmid.data.slices import load_slices

    if not path.is_file():
        return None
    return load_slices(path, allow_empty=True)


def _grid_rows(translations: dict, split, k: int) -> np.ndarray:
    """Test-split indices shown in the figures: ``k`` slices every method translated, taken from the
    half with the most brain (the top and bottom of the brain say little) and spread evenly over
    the split (one per stretch of k, from its middle)."""
    common = None
    for tr in translations.values():
        idx = set(np.asarray(tr["index"]).tolist())
        common = idx if common is None else common & idx
    pool = np.array(sorted(common)) if common is not None else np.arange(len(split))
    if pool.size == 0:
        return pool
    area = split.mask[pool].sum(axis=(1, 2))
    pool = pool[area >= np.median(area)]
    k = min(k, pool.size)
    return pool[((np.arange(k) + 0.5) * pool.size / k).astype(int)]


def _rows_of(tr: dict, indices: np.ndarray, key: str = "image") -> np.ndarray:
    where = {int(i): k for k, i in enumerate(np.asarray(tr["index"]))}
    return np.stack([tr[key][where[int(i)]] for i in indices])


# ------------------------------------------------------------------------------------ figures
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


def draw_figures(params, summary: dict, split, translations: dict, metrics_dir: Path, models_dir: Path,
                 fig_dir: Path, diagnostics: dict | None = None, unseen_split=None, baselines: dict | None = None,
                 baseline_images: dict | None = None) -> Figures:
    """Every figure of the report, in the order the page shows them."""
    figs = Figures(fig_dir)
    main = summary["main_experiment"]
    for exp, s in summary["experiments"].items():
        # An unseen-protocol experiment's sources and targets are its own slices, not the main split's.
        own = unseen_split if is_unseen_experiment(exp, params) else split
        _grid_figure(figs, params, exp, s, own, translations.get(exp, {}))
    _segmentation_figure(figs, params, split, translations.get(main, {}), summary["experiments"][main], models_dir)
    for exp, s in summary["experiments"].items():
        _metrics_figure(figs, params, exp, s, metrics_dir)
    _lmi_figure(figs, params, split, translations.get(main, {}))
    _loss_figure(figs, params, models_dir)
    _uncertainty_figure(figs, params, split, translations.get(main, {}))
    _sampler_figure(figs, summary)
    _convergence_figure(figs, diagnostics)
    _baselines_figure(figs, baselines, baseline_images)
    return figs


def _convergence_figure(figs: Figures, diagnostics: dict | None) -> None:
    path = figs.out_dir / FIGURE_FILES["convergence"]
    title = "LMIDiffusion convergence on validation slices"
    curve = (diagnostics or {}).get("convergence") or []
    if len(curve) < 2:
        figs.add("convergence", title, path, "", "fewer than two training snapshots (diffusion.train.snapshot_every)")
        return
    figures.convergence_curve(path, curve)
    figs.add("convergence", title, path,
             f"PD → T1 translation of {diagnostics['slices']} validation slices with the EMA weights kept every "
             "snapshot_every steps, scored like the test set (one sample per slice, the run's sampler). When the "
             "curves flatten, more training would not help.")


def _baselines_figure(figs: Figures, baselines: dict | None, images: dict | None) -> None:
    path = figs.out_dir / FIGURE_FILES["baselines"]
    title = "Baselines on their own: random samples and the reverse direction"
    if not baselines or not images:
        figs.add("baselines", title, path, "", "no baseline checks (lmid check-baselines) in this run")
        return
    labels = {"real": "real T1 (random)", "stylegan2_samples": "StyleGAN2-ADA samples",
              "sdedit_samples": "SDEdit DDPM samples", "cyclegan_target_to_source": "CycleGAN G_BA(T1)"}
    rows = [(label, images[key]) for key, label in labels.items() if key in images]
    figures.sample_rows(path, rows)
    figs.add("baselines", title, path,
             "Top: real target slices drawn at random. Then random samples of StyleGAN2-ADA's EMA generator "
             "(no inversion) and unconditional samples of SDEdit's DDPM, which should look like brains of the "
             "target modality; CycleGAN's reverse generator on the same real slices should look like the source. "
             "Numbers in the Baseline checks section.")


def baselines_section(baselines: dict | None, params) -> str:
    """The numbers of ``lmid check-baselines``: are the baselines trained?"""
    if not baselines:
        return '<p class="notrun">Not run: no <code>baselines.json</code> (no StyleGAN2, SDEdit or CycleGAN?).</p>'
    floor, real = baselines["floor"], baselines["real"]
    rows = [("real target (all test slices)", real), (f"floor: {floor['what']}", floor)]
    for m in ("stylegan2", "sdedit"):
        e = baselines["methods"].get(m)
        if e and e.get("status") == "ok":
            rows.append((f"{DISPLAY.get(m, m)}: {e['what']}", e))
    body = "".join(
        f"<tr><th scope='row'>{esc(label)}</th><td>{fmt(e.get('foreground_fraction'), 3)}</td>"
        f"<td>{fmt(e.get('foreground_mean'), 3)}</td><td>{fmt(e.get('saturated_fraction'), 3)}</td>"
        f"<td>{fmt(e.get('w1_to_real'), 3)}</td></tr>" for label, e in rows)
    parts = ['<div class="scroll"><table class="results narrow" id="table-baselines"><thead><tr><th>images</th>'
             "<th>foreground fraction</th><th>foreground mean</th><th>saturated (&gt; 0.98)</th>"
             "<th>W₁ to real foreground</th></tr></thead>"
             f"<tbody>{body}</tbody></table></div>",
             f'<p class="caption">{baselines["samples"]} samples per generator. Foreground: pixels above '
             f"{baselines['foreground_threshold']:g} on [0, 1], for generated and real slices alike. W₁: 1-Wasserstein "
             "distance between foreground intensity distributions; a generator whose samples sit near the floor "
             "cannot be told from real slices by their intensities; one far above it has not learnt the target's "
             "tissue intensities.</p>"]
    for m, e in baselines["methods"].items():
        if e.get("status") != "ok":
            parts.append(f'<p class="notrun">{esc(DISPLAY.get(m, m))}: {esc(e.get("status"))}</p>')
    cg = baselines["methods"].get("cyclegan")
    if cg and cg.get("status") == "ok":
        src, tgt = params.data.source_modality, params.data.target_modality
        items = [(f"{src} → {tgt} (G_AB, the translation scored)", cg["psnr_mask_source_to_target"]),
                 (f"{tgt} → {src} (G_BA)", cg["psnr_mask_target_to_source"]),
                 (f"cycle {src} → {tgt} → {src}", cg["psnr_mask_cycle_source"]),
                 (f"cycle {tgt} → {src} → {tgt}", cg["psnr_mask_cycle_target"])]
        body = "".join(f"<tr><th scope='row'>{esc(k)}</th><td>{fmt(v, 2)}</td></tr>" for k, v in items)
        parts.append("<h3>CycleGAN, both directions</h3>"
                     '<div class="scroll"><table class="results narrow" id="table-cyclegan"><thead><tr><th>test split'
                     f"</th><th>PSNR in brain (dB)</th></tr></thead><tbody>{body}</tbody></table></div>"
                     '<p class="caption">A cycle far better than either direction is the CycleGAN failure mode of '
                     "hiding the source in the translation instead of translating it.</p>")
    return "".join(parts)


def diagnostics_section(diagnostics: dict | None, params) -> str:
    """Conditioning ablation and oracle tables (``lmid diagnose``)."""
    if not diagnostics:
        return '<p class="notrun">Not run: no <code>diagnostics.json</code> (LMIDiffusion not in the methods?).</p>'
    ab = diagnostics["ablation"]
    rows = "".join(f"<tr><td>{r['t']}</td><td>{fmt(r['loss_true'], 4)}</td><td>{fmt(r['loss_shuffled'], 4)}</td>"
                   f"<td>{fmt(r['ratio'], 2)}</td></tr>" for r in ab["timesteps"])
    rows += (f"<tr><th scope='row'>mean</th><td>{fmt(ab['loss_true'], 4)}</td><td>{fmt(ab['loss_shuffled'], 4)}"
             f"</td><td>{fmt(ab['ratio'], 2)}</td></tr>")
    tgt = params.data.target_modality
    src = params.data.source_modality
    keys = (("dice_gt_mean", "Dice vs ground truth", 3), ("dice_km_mean", f"Dice vs K-Means of real {tgt}", 3),
            ("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 3), ("ssim_mask", "SSIM in brain", 3),
            ("contrast_wm_gm", "contrast WM−GM (× real)", 2), ("contrast_gm_csf", "contrast GM−CSF (× real)", 2),
            ("tissue_order", "WM > GM > CSF (fraction)", 2))
    orc = "".join(f"<tr><th scope='row'>{esc(label)}</th><td>{fmt(diagnostics['source'].get(k), d)}</td>"
                  f"<td>{fmt(diagnostics['oracle'].get(k), d)}</td></tr>" for k, label, d in keys)
    return (
        "<h3>Does the network use its conditioning?</h3>"
        '<div class="scroll"><table class="results narrow" id="table-ablation"><thead><tr><th>t</th>'
        "<th>ε-loss, true LMI</th><th>ε-loss, LMI of another slice</th><th>ratio</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
        f'<p class="caption">Validation ε-MSE of the trained network on {ab["slices"]} clean validation {tgt} slices '
        "with the network input built as in training, and with the two LMI channels taken from another slice of the "
        "batch (same x_t and ε). A ratio near 1 means the network ignores its conditioning.</p>"
        f"<h3>Oracle: the real {tgt} as the source</h3>"
        f'<div class="scroll"><table class="results narrow" id="table-oracle"><thead><tr><th>score</th>'
        f"<th>{esc(src)} → {esc(tgt)}</th><th>{esc(tgt)} → {esc(tgt)} (oracle)</th></tr></thead>"
        f"<tbody>{orc}</tbody></table></div>"
        f'<p class="caption">The same {diagnostics["slices"]} validation slices translated from {esc(src)} and from '
        f"the real {esc(tgt)} itself, with the run's sampler. The oracle bounds what LMI conditioning can deliver "
        "with this network; a weak oracle points at the learned prior or the sampler, not at the modality gap.</p>")


def _available(trs: dict, order: list[str]) -> dict:
    return {m: trs[m] for m in order if m in trs}


def _row_labels(split, rows) -> list[str]:
    return [f"{split.subject[i]} z={split.slice_index[i]}" for i in rows]


def _grid_figure(figs: Figures, params, exp: str, s: dict, split, trs: dict) -> None:
    path = figs.out_dir / FIGURE_FILES["grid"].format(experiment=exp)
    src_name, tgt = s["source_modality"], s["target_modality"]
    title = f"Qualitative comparison, {src_name} → {tgt}"
    trs = _available(trs, s["method_order"])
    if split is None or not trs:
        figs.add(f"grid-{exp}", title, path, "", "test split or translations not found")
        return
    try:
        source = split.modality(src_name, params.data.source_modality, params.data.target_modality)
    except KeyError:
        figs.add(f"grid-{exp}", title, path, "", f"the test split has no {src_name} slices")
        return
    rows = _grid_rows(trs, split, params.report.grid_slices)
    figures.qualitative_grid(path, source[rows], split.target[rows], {m: _rows_of(t, rows) for m, t in trs.items()},
                             DISPLAY, _row_labels(split, rows), src_name, tgt)
    figs.add(f"grid-{exp}", title, path,
             f"{len(rows)} test slices (rows: spread over the half of the split with the most brain; subject and "
             "axial index on the left). "
             f"Columns: the {src_name} source, every method's translation (mean over samples), the real registered "
             f"{tgt} slice. All images on [0, 1], same grey scale.")


def _segmentation_figure(figs: Figures, params, split, trs: dict, s_main: dict, models_dir: Path) -> None:
    from lmid.evaluation.segment import KMeansSegmenter

    path = figs.out_dir / FIGURE_FILES["segmentation"]
    title = "K-Means segmentations"
    seg_path = models_dir / "kmeans.json"
    trs = _available(trs, s_main["method_order"])
    if split is None or not trs or not seg_path.is_file():
        figs.add("segmentation", title, path, "", "segmenter, test split or translations not found")
        return
    seg = KMeansSegmenter.load(seg_path)
    tgt = params.data.target_modality
    rows = _grid_rows(trs, split, min(params.report.grid_slices, 3))
    masks = split.mask[rows]

    def segment(images):
        return np.stack([seg.predict(x, mk) for x, mk in zip(images, masks)])

    cols = {}
    if split.has_label:
        cols["ground truth"] = (split.target[rows], split.label[rows])
    cols[f"K-Means of real {tgt}"] = (split.target[rows], segment(split.target[rows]))
    for m, t in trs.items():
        images = _rows_of(t, rows)
        cols[DISPLAY.get(m, m)] = (images, segment(images))
    figures.segmentation_overlays(path, split.target[rows], cols, _row_labels(split, rows))
    figs.add("segmentation", title, path,
             f"The target-only K-Means segmenter (K = {len(seg.centroids)}, fitted on {tgt} training slices) applied "
             f"unchanged to each translation and to the real {tgt} slice, inside the test slice's brain mask. "
             + ("The first column is the ground truth. " if split.has_label else "") + "CSF blue, GM orange, WM red.")


def _metrics_figure(figs: Figures, params, exp: str, s: dict, metrics_dir: Path) -> None:
    path = figs.out_dir / FIGURE_FILES["metrics"].format(experiment=exp)
    title = f"Per-slice scores, {s['source_modality']} → {s['target_modality']}"
    gt = s["dice_key"] == "dice_gt"
    dice = ("dice_gt_mean", "Dice (vs ground truth)") if gt else ("dice_km_mean", "Dice (vs K-Means of target)")
    panels = [dice, ("psnr", "PSNR (dB)"), ("ssim", "SSIM")]
    values: dict = {key: {} for key, _ in panels}
    for m in s["method_order"]:
        csv = metrics_dir / exp / f"{m}.csv"
        if csv.is_file():
            df = read_metrics_csv(csv)
            for key, _ in panels:
                if key in df.columns:
                    values[key][m] = df[key].to_numpy(dtype=float)
    if not values[panels[0][0]]:
        figs.add(f"metrics-{exp}", title, path, "", "per-slice metrics not found")
        return
    figures.metric_distributions(path, values, DISPLAY, panels, seed=params.seed)
    figs.add(f"metrics-{exp}", title, path,
             "Each point is one test slice; boxes show the median and quartiles (whiskers 1.5 IQR). "
             "Dice is the per-slice mean over CSF, GM and WM.")


def _sampler_figure(figs: Figures, summary: dict) -> None:
    path = figs.out_dir / FIGURE_FILES["sampler"]
    title = "LMIDiffusion: quality against sampling time"
    sampler = summary.get("sampler", {})
    if sampler.get("status") != "ok":
        figs.add("sampler", title, path, "", "sampler sweep not run")
        return
    figures.sampler_tradeoff(path, sampler["settings"])
    figs.add("sampler", title, path,
             "Mean ± std over the sweep's validation slices for each sampler setting, against wall-clock seconds per "
             "slice on the machine that translated (circles DDIM, squares ancestral).")


def _lmi_figure(figs: Figures, params, split, trs: dict) -> None:
    title = "Local mutual information maps"
    path = figs.out_dir / FIGURE_FILES["lmi"]
    if split is None or len(split) == 0:
        figs.add("lmi", title, path, "", "test split not found")
        return
    import torch

    from lmid.diffusion.schedule import NoiseSchedule
    from lmid.lmi import local_mutual_information

    method = "lmidiffusion" if "lmidiffusion" in trs else next(iter(trs), None)
    i = int(_grid_rows(trs, split, 1)[0]) if trs else 0
    s = split.source[i].astype(np.float32)
    y = split.target[i].astype(np.float32)
    schedule = NoiseSchedule(params.diffusion.schedule)
    T = schedule.T
    ts = sorted({0, int(0.1 * T), int(0.25 * T), int(0.5 * T), int(0.75 * T), T - 1})
    eps = np.random.default_rng(params.seed + 33).standard_normal(s.shape).astype(np.float32)

    def noised(x0, t):  # q(x_t | x_0), not clipped: the sampler feeds its x_t to the LMI as is
        return schedule.add_noise(torch.from_numpy(x0)[None], torch.from_numpy(eps)[None],
                                  torch.tensor([t]))[0].numpy()

    pairs = [(s, s), (s, y)]
    x = None
    if method is not None:
        x = _rows_of(trs[method], np.array([i]))[0].astype(np.float32)
        pairs.append((s, x))
    inter = trs.get(method, {}) if method else {}
    has_inter = "intermediates" in inter and "intermediate_t" in inter
    pairs += [(s, noised(y, t)) for t in ts] + [(s, noised(s, t)) for t in ts]
    if has_inter:
        xi = _rows_of(inter, np.array([i]), "intermediates")[0].astype(np.float32)
        pairs += [(s, xi[j]) for j in range(xi.shape[0])]
    lp = params.lmi
    with torch.no_grad():
        a = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
        b = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None]
        maps = local_mutual_information(a, b, mode=lp.mode, window=lp.window, bins=lp.bins, sigma=lp.sigma)
    maps = maps[:, 0].numpy()
    src_name = params.data.source_modality
    tgt = params.data.target_modality
    grey = ("gray", (0.0, 1.0))
    images = [("source s", s, *grey), (f"real {tgt} y", y, *grey)]
    images += [(f"{DISPLAY.get(method, method)} x", x, *grey)] if x is not None else []
    k0 = 3 if x is not None else 2
    first = [("LMI(s, s)", maps[0]), ("LMI(s, y)", maps[1])] + ([("LMI(s, x)", maps[2])] if x is not None else [])
    n_t = len(ts)
    rows = [
        ("images and LMI", images + first, "magma", None),
        (f"LMI(s, y_t)\ny_t = noised real {tgt}", [(f"t = {t}", maps[k0 + j]) for j, t in enumerate(ts)],
         "magma", None),
        ("LMI(s, s_t)\ns_t = noised source", [(f"t = {t}", maps[k0 + n_t + j]) for j, t in enumerate(ts)],
         "magma", None),
    ]
    if has_inter:
        tt = np.asarray(inter["intermediate_t"]).tolist()
        rows.append(("LMI(s, x_t)\nsampler's own x_t",
                     [(f"t = {t}", maps[k0 + 2 * n_t + j]) for j, t in enumerate(tt)], "magma", None))
    figures.lmi_maps(path, rows)
    where = ("the sampler's own intermediates x_t are shown in the last row" if has_inter else
             "the translations carry no sampler intermediates, so the lower rows illustrate what the sampler sees "
             f"with x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε for x₀ the real {tgt} slice (an ideal trajectory) and for x₀ the "
             "source itself (the start of SDEdit or a source-started sampler), one fixed ε, not clipped")
    figs.add("lmi", title, path,
             f"Test slice {split.subject[i]} z={split.slice_index[i]}. Top: the {src_name} source s, the real {tgt} "
             f"slice y and the translation x, then the self-LMI of the source (the fixed conditioning channel) and "
             f"the cross-LMI with y and with x. LMI computed with lmid.lmi ({lp.mode} mode, window {lp.window}, "
             f"{lp.bins} bins, σ = {lp.sigma:g}); each row has its own colour scale. At large t, noisy values leave "
             f"[0, 1] and the estimator's kernels underflow, which drives the map towards 2. Here {where}.")


def _loss_figure(figs: Figures, params, models_dir: Path) -> None:
    import pandas as pd

    path = figs.out_dir / FIGURE_FILES["loss_curves"]
    logs = {}
    order = method_order([p.parent.name for p in sorted(models_dir.glob("*/train_log.csv"))], params) \
        if models_dir.is_dir() else []
    for m in order:
        csv = models_dir / m / "train_log.csv"
        try:
            df = pd.read_csv(csv)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            log.warning("%s: unreadable (%s); left out of the loss curves", csv, err)
            continue
        if "step" in df.columns and len(df) and figures.loss_series(df):
            logs[m] = df
    title = "Training losses"
    if not logs:
        figs.add("loss_curves", title, path, "", "no train_log.csv with losses")
        return
    figures.loss_curves(path, logs, DISPLAY)
    figs.add("loss_curves", title, path,
             "Every loss column of each method's train_log.csv against the training step (faint: logged values; "
             "solid: exponential moving average). CDM's three stages (MRM, MDN, C-UNet) are separate curves. "
             "Methods without training (identity) or without losses are not shown.")


def _uncertainty_figure(figs: Figures, params, split, trs: dict) -> None:
    title = "Uncertainty over samples"
    path = figs.out_dir / FIGURE_FILES["uncertainty"]
    with_std = {m: t for m, t in trs.items() if "std" in t and np.any(np.asarray(t["std"]) > 0)}
    if split is None or not with_std:
        figs.add("uncertainty", title, path, "", "no method was sampled more than once per slice")
        return
    rows = _grid_rows(with_std, split, min(params.report.grid_slices, 3))
    cols = {DISPLAY.get(m, m): (_rows_of(t, rows, "mean" if "mean" in t else "image"), _rows_of(t, rows, "std"))
            for m, t in with_std.items()}
    figures.uncertainty_maps(path, cols, _row_labels(split, rows))
    figs.add("uncertainty", title, path,
             "For methods that drew several samples per slice: the mean over the samples and the per-pixel "
             "standard deviation, on one colour scale. The tables score one sample per slice (the first), "
             "not this mean, which is blurrier than any sample.")


# ------------------------------------------------------------------------------------ HTML parts
def _stat_cell(st: dict | None, decimals: int, bold: bool) -> str:
    if st is None:
        return '<td class="na">not run</td>'
    if st.get("mean") is None:
        return '<td class="na">—</td>'
    main = f"{fmt(st['mean'], decimals)} ± {fmt(st['std'], decimals)}"
    if bold:
        main = f"<strong>{main}</strong>"
    ci = ""
    if st.get("ci_low") is not None:
        ci = f'<span class="ci">[{fmt(st["ci_low"], decimals)}, {fmt(st["ci_high"], decimals)}]</span>'
    return f"<td>{main}{ci}</td>"


def experiment_table(exp: str, s: dict, params, summary: dict) -> str:
    methods = s.get("table_methods", s["method_order"])
    with_paper = exp == summary["main_experiment"]
    ref = summary["reference_method"]
    head = "".join(
        f'<th scope="col">{esc(DISPLAY.get(m, m))}'
        + (f'<span class="role">{esc(role(m, params))}</span>' if role(m, params) else "") + "</th>"
        for m in methods)
    body = []
    tgt = s["target_modality"]

    def paper_row(key: str, label: str) -> None:
        if with_paper:
            cells = "".join(f"<td>{PAPER[m][key][0]:.2f} ± {PAPER[m][key][1]:.2f}</td>" if m in PAPER
                            else '<td class="na">—</td>' for m in methods)
            body.append(f'<tr class="paper"><th scope="row">{esc(label)} <span class="tag">paper, IXI</span></th>'
                        f"{cells}</tr>")

    def row(key: str, label: str, dec: int, cls: str = "secondary") -> None:
        cells = "".join(_stat_cell(method_stats(s, m, key), dec, False) for m in methods)
        body.append(f'<tr class="{cls}"><th scope="row">{esc(label)}</th>{cells}</tr>')

    # Same rows, same order as the Markdown table (lmid.evaluation.aggregate.table_rows): IXI has
    # no labels, so the paper's Dice stands beside our Dice against K-Means of the real target.
    for key, label, dec in ROWS:
        best = best_method(s, key, methods)
        cells = "".join(_stat_cell(method_stats(s, m, key), dec, m == best) for m in methods)
        body.append(f'<tr class="ours"><th scope="row">{esc(label)}</th>{cells}</tr>')
        if key == "dice" and s["dice_key"] == "dice_gt":
            row("dice_km", f"Dice vs K-Means of real {tgt}", 2, "ours")
            paper_row("dice", "Dice")
            row("dice_ceiling", f"Dice ceiling: K-Means on the real {tgt}", 2)
        else:
            paper_row(key, label)
    for key, label, dec in (("contrast_wm_gm", "Tissue contrast WM−GM (× real)", 2),
                            ("contrast_gm_csf", "Tissue contrast GM−CSF (× real)", 2),
                            ("tissue_order", "WM > GM > CSF (fraction of slices)", 2),
                            ("psnr_mask", "PSNR in brain (dB)", 2), ("ssim_mask", "SSIM in brain", 2)):
        row(key, label, dec)
    for key, label, _ in ROWS:
        cells = "".join("<td>ref.</td>" if m == ref else '<td class="na">—</td>' if m not in s["methods"] else
                        f"<td>{esc(fmt_p(method_stats(s, m, key).get('p_vs_reference')))}</td>" for m in methods)
        body.append(f'<tr class="pval"><th scope="row">p {esc(label.split()[0])} vs {esc(DISPLAY.get(ref, ref))}</th>'
                    f"{cells}</tr>")
    cells = "".join(f"<td>{s['methods'][m].get('n_subjects') or '—' if m in s['methods'] else 0}</td>"
                    for m in methods)
    body.append(f'<tr class="pval"><th scope="row">subjects (n)</th>{cells}</tr>')
    cells = "".join(f"<td>{s['methods'][m]['n'] if m in s['methods'] else 0}</td>" for m in methods)
    body.append(f'<tr class="pval"><th scope="row">slices (n)</th>{cells}</tr>')
    first = f"{esc(s['source_modality'])} → {esc(s['target_modality'])}"
    return (f'<div class="scroll"><table class="results" id="table-{esc(exp)}"><thead><tr><th scope="col">{first}</th>'
            f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
            f'<p class="caption">{esc(s["caption"])}</p>')


def sampler_section(summary: dict) -> str:
    sampler = summary.get("sampler", {})
    parts = ["<h3>LMIDiffusion at several sampler settings</h3>"]
    if sampler.get("status") != "ok":
        parts.append('<p class="notrun">Not run: no <code>data/metrics/sampler/*.csv</code>.</p>')
    else:
        rows = "".join(
            f"<tr><th scope=\"row\">{esc(r['setting'])}</th><td>{esc(r['kind'])}</td><td>{r['steps']}</td>"
            f"<td>{fmt(r['nfe_per_slice'], 0)}</td><td>{fmt(r['wall_s_per_slice'], 3)}</td>"
            + "".join(_stat_cell(r[k], d, False) for k, d in (("dice", 3), ("psnr", 2), ("ssim", 3)))
            + f"<td>{r['n']}</td></tr>" for r in sampler["settings"])
        dice = ("vs ground truth" if sampler["settings"][0]["dice_key"] == "dice_gt" else "vs K-Means of the target")
        parts.append(
            '<div class="scroll"><table class="results" id="table-sampler"><thead><tr><th>setting</th><th>sampler</th>'
            "<th>steps</th><th>NFE / slice</th><th>s / slice</th><th>Dice</th><th>PSNR (dB)</th><th>SSIM</th>"
            f"<th>n</th></tr></thead><tbody>{rows}</tbody></table></div>"
            f'<p class="caption">LMIDiffusion translating the same validation slices with each sampler (one sample '
            f"per slice). Dice {dice}; mean ± std over slices [bootstrap CI]; time is wall-clock per slice on the "
            "machine that translated (batched, so it is the batch time divided by its slices). "
            f"{esc(smallest_nfe_sentence(sampler.get('smallest_nfe')))}</p>")
    t0 = summary.get("sdedit_t0", {})
    parts.append("<h3>SDEdit: noise level t0 chosen on validation slices</h3>")
    if t0.get("status") != "ok":
        parts.append('<p class="notrun">Not run: no validation sweep in SDEdit\'s <code>train_info.json</code>.</p>')
    else:
        cols = t0["columns"]
        rows = "".join("<tr>" + "".join(f"<td>{esc(plain(r.get(c)))}</td>" for c in cols) + "</tr>"
                       for r in t0["rows"])
        chosen = t0.get("chosen_t0")
        parts.append(
            '<div class="scroll"><table class="results narrow" id="table-sdedit-t0"><thead><tr>'
            + "".join(f"<th>{esc(c)}</th>" for c in cols) + f"</tr></thead><tbody>{rows}</tbody></table></div>"
            + f'<p class="caption">The validation sweep recorded by SDEdit\'s training step (never the test split).'
            + (f" Chosen: t0 = {esc(chosen)}." if chosen is not None else "") + "</p>")
    return "\n".join(parts)


def _kv_table(items, cls: str = "kv") -> str:
    rows = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{v}</td></tr>' for k, v in items)
    return f'<table class="{cls}"><tbody>{rows}</tbody></table>'


def _short(value, limit: int = 240) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k} {_short(v, 80)}" for k, v in value.items()) or "none"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_short(v, 80) for v in value) or "none"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: Manifest entries the data section leaves out (shown elsewhere or only for machines).
MANIFEST_HIDDEN = {"format", "params", "labels", "slice_affine_maps"}


def data_section(params, slices_dir: Path, splits: dict) -> str:
    d = params.data
    source_desc = {
        "simulated": "simulated multi-contrast brains (MNI152 2009 tissue maps + MR signal equations, per-subject "
                     "deformation, bias field, Rician noise; ground-truth labels). Not IXI: absolute numbers are not "
                     "comparable with the paper's.",
        "ixi": "IXI (the paper's data set), T1 registered to the PD grid.",
        "brats": "BraTS-style co-registered multi-contrast cases.",
    }[d.source]
    items = [("data source", esc(f"{d.source}: {source_desc}")),
             ("translation", esc(f"{d.source_modality} → {d.target_modality}; extra zero-shot sources: "
                                 f"{', '.join(d.extra_modalities) or 'none'}"))]
    for name, sp in splits.items():
        if sp is None:
            items.append((f"{name} split", "not found"))
            continue
        subjects = sorted(set(sp.subject.tolist()))
        items.append((f"{name} split", esc(
            f"{len(sp)} slices of {sp.shape[0]}×{sp.shape[1]} px from {len(subjects)} subjects"
            + (" (with ground-truth labels)" if sp.has_label else " (no ground-truth labels)")
            + f": {', '.join(subjects)}")))
    manifest_path = slices_dir / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = read_json(manifest_path)
        except LmidError as err:
            manifest = {"error": str(err)}
        for key, value in (manifest.items() if isinstance(manifest, dict) else []):
            if key in MANIFEST_HIDDEN:
                continue
            if key == "subjects" and isinstance(value, dict):
                items.append(("manifest: subjects", esc(f"{len(value)} subjects with geometry recorded")))
                continue
            if isinstance(value, dict) and value:
                # One line per entry, so nested counts stay readable.
                text = "<br>".join(f"<b>{esc(k)}</b>: {esc(_short(v, 300))}" for k, v in value.items())
            else:
                text = esc(_short(value)) if value not in ({}, [], "", None) else "none"
            items.append((f"manifest: {key}", text))
    else:
        items.append(("manifest", "not found"))
    return _kv_table(items)


#: What each ``stylegan2.invert_loss`` means (lmid/methods/stylegan2.py).
INVERSION_LOSSES = {
    "nmi_mind": "nmi_mind = (1 − NMI(s, g)) + MIND(s, g): normalised mutual information of the whole slice from a "
                "differentiable Parzen joint histogram, plus the modality-independent neighbourhood descriptor "
                "distance (local structure)",
    "lmi_mind": "lmi_mind = (1 − mean LMI(s, g) / mean LMI(s, s)) + MIND(s, g), with the project's differentiable "
                "LMI (exact mode)",
}


def _read_manifest(slices_dir: Path) -> dict:
    try:
        value = read_json(Path(slices_dir) / "manifest.json")
    except (LmidError, OSError):
        return {}
    return value if isinstance(value, dict) else {}


def brain_mask_text(manifest: dict) -> str:
    """How ``prepare`` found the brain and corrected the bias field, with the with/without-N4 check."""
    text = f"Brain mask: {manifest.get('brain_mask', 'not recorded')}. Bias field: {manifest.get('bias_correction', 'none')}."
    check = manifest.get("bias_check")
    if isinstance(check, dict):
        text += (f" K-Means Dice ceiling on the real target's {check.get('test_slices')} test slices: "
                 f"{check['dice_ceiling_with_n4']:.3f} with N4, {check['dice_ceiling_without_n4']:.3f} without "
                 f"(applied: {check.get('applied')}).")
    return text


def protocol_items(params, summary: dict, models_dir: Path, manifest: dict | None = None) -> list[tuple[str, str]]:
    """The choices the paper does not state, with the values this run used."""
    d, p, ev = params.data, params.prepare, params.evaluate
    infos = summary.get("train_info", {})
    seg_text = f"K = {params.segment.n_clusters} clusters"
    seg_path = models_dir / "kmeans.json"
    if seg_path.is_file():
        try:
            seg = read_json(seg_path)
            seg_text += (f"; centroids {', '.join(f'{c:.3f}' for c in seg.get('centroids', []))} → "
                         f"{', '.join(seg.get('mapping_names', []))}")
        except LmidError:
            pass
    sty = infos.get("stylegan2", {})
    loss = sty.get("invert_loss") or getattr(params.stylegan2, "invert_loss", None)
    inversion = INVERSION_LOSSES.get(loss, loss)
    t0 = summary.get("sdedit_t0", {})
    sd = infos.get("sdedit", {})
    chosen = t0.get("chosen_t0")
    if chosen is None:
        chosen = next((sd[k] for k in ("t0", "chosen_t0", "best_t0") if k in sd), None)
    sampler = params.lmidiffusion.sampler
    grid = ", ".join(f"{x:g}" for x in params.sdedit.t0_grid)
    site = (f"simulated sites {', '.join(params.simulate.sites)} (labels only)" if d.source == "simulated"
            else (", ".join(d.sites) if d.sites else "all sites"))
    return [
        ("Site", f"Paper: an IXI site, not named. Ours: {site}."),
        ("Slice selection", f"Axial slices whose brain covers ≥ {p.min_brain_fraction:g} of the brain's bounding box; "
                            f"{p.slices.train}/{p.slices.val}/{p.slices.test} train/val/test slices at most, split by "
                            f"subject ({p.split.train:g}/{p.split.val:g}/{p.split.test:g}); {p.size}×{p.size} px."),
        ("Registration", "T1 registered to the PD grid (rigid then affine, Mattes mutual information)"
         if d.source == "ixi" and d.registration else
         "None needed: all modalities are simulated on one grid." if d.source == "simulated" else
         "None (co-registered input)." if d.source == "brats" else "Disabled (data.registration = false)."),
        ("Brain mask and bias field", brain_mask_text(manifest or {})),
        ("Normalisation", f"Per volume: clip to the {p.percentiles[0]:g}–{p.percentiles[1]:g} percentiles inside the "
                          "brain, then map linearly to [0, 1]."),
        ("Segmenter", f"K-Means on {d.target_modality} training intensities inside the brain mask only, "
                      f"{seg_text}; clusters sorted by centroid intensity and mapped "
                      f"{' < '.join(params.segment.tissue_order)}"
                      + ("; with K ≠ 3 each cluster joins the nearest centroid of a 3-cluster fit"
                         if params.segment.n_clusters != 3 else "")
                      + ". Applied unchanged to translations and the real target, inside the test slice's mask."),
        ("Dice", "Per slice the unweighted mean of CSF, GM and WM Dice, then mean over slices; a class absent from "
                 "both segmentations scores 1, absent from one 0. Against ground truth when the data has labels, "
                 "else against K-Means of the real target (both are reported)."),
        ("PSNR / SSIM", "Against the real registered target slice, both on [0, 1], data range 1; whole slice in the "
                        "main rows (PSNR capped at 100 dB), brain mask only in the 'in brain' rows (SSIM: mean of the "
                        "full SSIM map over mask pixels). SSIM: scikit-image defaults (7×7 uniform window, "
                        "K1 = 0.01, K2 = 0.03)."),
        ("StyleGAN2 inversion loss", "Paper/reference projector: LPIPS-VGG, whose pretrained weights cannot be "
                                     "downloaded here. Ours: " + (f"{inversion}." if inversion else
                                                                  "see lmid/methods/stylegan2.py.")),
        ("SDEdit t0", f"Chosen on validation slices from t0/T ∈ {{{grid}}}"
                      + (f": {chosen}" if chosen is not None else "") + f"; {params.sdedit.repeats} repeat(s)."),
        ("LMI layer", f"{params.lmi.mode} mode, window {params.lmi.window}, {params.lmi.bins} bins, σ = "
                      f"{params.lmi.sigma:g}."),
        ("LMIDiffusion sampler", f"{sampler.kind}, {sampler.steps} steps, start from {sampler.start}, "
                                 f"{sampler.samples} sample(s) per slice (paper: 1000 ancestral steps from noise, "
                                 "one sample)."),
        ("Statistics", f"{100 * ev.confidence:g} % percentile bootstrap CI of the mean ({ev.bootstrap} resamples of "
                       "whole test subjects, seeded: slices of one subject are not independent); two-sided paired "
                       f"Wilcoxon signed-rank test over slices against "
                       f"{DISPLAY.get(ev.reference_method, ev.reference_method)}, which is optimistic for the same "
                       "reason. The sampler table resamples slices."),
    ]


def timings_table(summary: dict, params) -> str:
    infos = summary.get("train_info", {})
    tim = summary.get("timings", {})
    methods = method_order(list(tim), params)
    skip = {"method", "access", "train_wall_s", "device", "t0_sweep", "val_sweep", "sweep", "validation", "t0_search"}
    rows = []
    for m in methods:
        t = tim[m]
        info = infos.get(m, {})
        facts = "; ".join(f"{k}: {_short(v, 80)}" for k, v in info.items() if k not in skip)
        rows.append(
            f"<tr><th scope=\"row\">{esc(column_title(m, params))}</th><td>{esc(info.get('access', '—'))}</td>"
            f"<td>{fmt(t.get('train_wall_s'), 1)}</td><td>{fmt(t.get('translate_wall_s_per_slice'), 3)}</td>"
            f"<td>{fmt(t.get('nfe_per_slice'), 0)}</td><td>{esc(t.get('device') or '—')}</td>"
            f'<td class="facts">{esc(facts) or "—"}</td></tr>')
    return ('<div class="scroll"><table class="results" id="table-timings"><thead><tr><th>method</th>'
            "<th>training data</th><th>train wall time (s)</th><th>translate s / slice</th><th>NFE / slice</th>"
            "<th>device</th><th>facts from train_info.json</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table></div>"
            '<p class="caption">Wall-clock times as recorded by the training and translation steps, on the machine '
            "that ran them; translation time per slice is the batch time divided by its slices (main experiment). "
            "NFE: network evaluations per translated slice (all samples).</p>")


CSS = """
.notice { background: #fff4e5; border-left: 4px solid #e69500; padding: .6em 1em; }
:root { --ink:#1d2733; --muted:#5d6b7a; --line:#d9dee4; --accent:#a93226; --paper:#f4efe1; --bg:#fbfbfc; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:15px/1.5 -apple-system, "Segoe UI", "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; }
header { background:#1d2733; color:#fff; padding:28px 0 22px; }
header h1 { margin:0 0 6px; font-size:25px; font-weight:600; }
header p { margin:0; color:#c9d2dc; font-size:13px; }
.wrap { max-width:1220px; margin:0 auto; padding:0 28px; }
nav { background:#fff; border-bottom:1px solid var(--line); font-size:13.5px; }
nav .wrap { display:flex; flex-wrap:wrap; gap:4px 20px; padding-top:10px; padding-bottom:10px; }
nav a { color:var(--ink); text-decoration:none; border-bottom:2px solid transparent; }
nav a:hover { border-bottom-color:var(--accent); }
main section { background:#fff; border:1px solid var(--line); border-radius:8px; margin:22px 0;
  padding:8px 26px 20px; }
h2 { font-size:20px; margin:16px 0 10px; border-bottom:2px solid var(--accent); display:inline-block;
  padding-bottom:2px; }
h3 { font-size:16px; margin:22px 0 8px; }
p { margin:8px 0; }
.lead { color:var(--muted); }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; font-size:13px; }
table.results { width:100%; margin:10px 0 4px; }
table.results.narrow { width:auto; }
table.results th, table.results td { padding:6px 9px; border-bottom:1px solid var(--line); text-align:center;
  vertical-align:top; white-space:nowrap; }
table.results thead th { background:#eef1f4; font-weight:600; border-bottom:2px solid #b8c1cb; }
table.results tbody th { text-align:left; font-weight:600; }
table.results tr.paper td, table.results tr.paper th { background:var(--paper); color:#5b4a1e; font-style:italic; }
table.results tr.secondary td, table.results tr.secondary th { color:var(--muted); }
table.results tr.pval td, table.results tr.pval th { color:var(--muted); font-size:12px; background:#fafbfc; }
table.results td.facts { text-align:left; white-space:normal; font-size:12px; color:var(--muted); min-width:280px; }
.role { display:block; font-weight:400; font-size:11px; color:var(--muted); }
.ci { display:block; font-size:11px; color:var(--muted); }
.tag { font-size:10.5px; font-style:normal; background:#e6d9b4; color:#5b4a1e; border-radius:3px; padding:0 4px;
  margin-left:4px; }
table.results td.na, table.results tr td.na { color:#aab3bd; }
strong { color:var(--accent); }
.caption { font-size:13px; color:var(--muted); max-width:1100px; }
.notrun { color:#8a6d1b; background:#fdf6e3; border-left:3px solid #e0b84c; padding:6px 10px; }
figure { margin:18px 0 26px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; background:#fff; }
figcaption { font-size:13px; color:var(--muted); margin-top:6px; max-width:1100px; }
figcaption b { color:var(--ink); }
table.kv { width:100%; }
table.kv th { text-align:left; vertical-align:top; padding:5px 14px 5px 0; width:220px; color:var(--muted);
  font-weight:600; border-bottom:1px solid var(--line); }
table.kv td { padding:5px 0; border-bottom:1px solid var(--line); }
pre { background:#f3f5f7; border:1px solid var(--line); border-radius:6px; padding:12px 14px; font-size:12px;
  line-height:1.4; overflow-x:auto; max-height:560px; }
code { font-family:"DejaVu Sans Mono", Menlo, Consolas, monospace; font-size:12.5px; }
footer { color:var(--muted); font-size:12px; padding:8px 0 30px; }
"""


def _figure_html(item: dict) -> str:
    if item["missing"]:
        return (f'<figure id="fig-{esc(item["id"])}"><h3>{esc(item["title"])}</h3>'
                f'<p class="notrun">Not available: {esc(item["missing"])}.</p></figure>')
    data = base64.b64encode(Path(item["path"]).read_bytes()).decode("ascii")
    return (f'<figure id="fig-{esc(item["id"])}"><h3>{esc(item["title"])}</h3>'
            f'<img alt="{esc(item["title"])}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{esc(Path(item['path']).name)}.</b> {esc(item['caption'])}</figcaption></figure>")


def protocol_shift_section(summary: dict, params) -> str:
    shift = summary.get("protocol_shift") or {}
    if shift.get("status") != "ok":
        return '<p class="notrun">Not run: no unseen-protocol experiment in the metrics.</p>'
    parts = [f'<p class="lead">{esc(protocol_description(params))}</p>']
    for exp, e in shift["experiments"].items():
        methods = [m for m in summary["experiments"][exp]["method_order"] if m in e["methods"]]
        head = "".join(f'<th scope="col">{esc(column_title(m, params))}</th>' for m in methods)
        rows = []
        for key, label in (("main", "Dice, main protocol"), ("unseen", "Dice, unseen protocol")):
            rows.append(f'<tr><th scope="row">{label}</th>'
                        + "".join(f"<td>{esc(fmt(e['methods'][m][key]))}</td>" for m in methods) + "</tr>")
        cells = "".join(
            f"<td>{e['methods'][m]['change']['mean']:+.2f} <span class=\"ci\">[{e['methods'][m]['change']['ci_low']:+.2f}, "
            f"{e['methods'][m]['change']['ci_high']:+.2f}]</span></td>" for m in methods)
        rows.append(f'<tr class="ours"><th scope="row">change</th>{cells}</tr>')
        parts.append(f"<h3><code>{esc(exp)}</code> → <code>{esc(e['unseen_experiment'])}</code></h3>"
                     f'<div class="scroll"><table class="results" id="shift-{esc(exp)}"><thead><tr><th scope="col">Dice'
                     f"</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    return "".join(parts)


def build_report(params, params_path, reports_dir, models_dir, metrics_dir, translations_dir, slices_dir,
                 out_path, unseen_slices_dir=None, baseline_images_path=None) -> Path:
    import yaml

    reports_dir, models_dir, metrics_dir, translations_dir, slices_dir, out_path = map(
        Path, (reports_dir, models_dir, metrics_dir, translations_dir, slices_dir, out_path))
    summary_path = reports_dir / "summary.json"
    if not summary_path.is_file():
        raise InputFileError(summary_path, "file not found (run 'lmid aggregate' first)")
    summary = read_json(summary_path)
    if not isinstance(summary, dict) or summary.get("main_experiment") not in summary.get("experiments", {}):
        raise InputFileError(summary_path, "not a summary written by 'lmid aggregate'")
    fig_dir = reports_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)

    splits = {name: _load_split(slices_dir / f"{name}.npz") for name in ("train", "val", "test")}
    test = splits["test"]
    experiments = list(summary["experiments"])
    translations = _load_translations(translations_dir, experiments,
                                      {e: s["method_order"] for e, s in summary["experiments"].items()})
    for exp, trs in translations.items():
        for m, tr in trs.items():
            if test is not None and (tr["image"].shape[1:] != test.shape
                                     or np.max(tr["index"], initial=-1) >= len(test)):
                raise InputFileError(translations_dir / exp / m / "translations.npz",
                                     f"does not match the test split {slices_dir / 'test.npz'}")
    diag_path = reports_dir / "diagnostics.json"
    diagnostics = read_json(diag_path) if diag_path.is_file() else None
    unseen_test = _load_split(Path(unseen_slices_dir) / "test.npz") if unseen_slices_dir else None
    base_path = reports_dir / "baselines.json"
    baselines = read_json(base_path) if base_path.is_file() else None
    baseline_images = load_npz(baseline_images_path) if baselines and baseline_images_path else None
    figs = draw_figures(params, summary, test, translations, metrics_dir, models_dir, fig_dir, diagnostics,
                        unseen_split=unseen_test, baselines=baselines, baseline_images=baseline_images)

    git = environment.git_commit()
    vers = environment.versions()
    dev = environment.device()
    main = summary["main_experiment"]
    s_main = summary["experiments"][main]
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    params_text = yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=110)

    sections = []
    # Results
    res = [f'<section id="results"><h2>Results: {esc(s_main["source_modality"])} → '
           f'{esc(s_main["target_modality"])}</h2>',
           '<p class="lead">The paper\'s table regenerated on our data, with the paper\'s own numbers (IXI) in the '
           "shaded rows beside ours. CDM is supervised (trained on pairs): an upper bound, not a competitor. "
           "CycleGAN sees a fraction of the source modality in training, so it is not zero-shot. Identity and "
           "histogram matching are references.</p>",
           experiment_table(main, s_main, params, summary), "</section>"]
    sections.append("".join(res))
    others = [e for e in experiments if e != main and not is_unseen_experiment(e, params)]
    unseen = [e for e in experiments if is_unseen_experiment(e, params)]
    sec = ['<section id="second-source"><h2>Zero-shot second source</h2>']
    if not others:
        sec.append('<p class="notrun">Not run: no second-source experiment in the metrics.</p>')
    for exp in others:
        s = summary["experiments"][exp]
        sec.append(f"<h3>{esc(s['source_modality'])} → {esc(s['target_modality'])} (experiment "
                   f"<code>{esc(exp)}</code>)</h3><p class=\"lead\">The same trained models translate "
                   f"{esc(s['source_modality'])} test slices they were never built for; the paper reports no numbers "
                   f"for this source.</p>" + experiment_table(exp, s, params, summary))
    sec.append("</section>")
    sections.append("".join(sec))
    sec = ['<section id="unseen-protocol"><h2>Unseen protocol, no retraining</h2>',
           protocol_shift_section(summary, params)]
    for exp in unseen:
        s = summary["experiments"][exp]
        sec.append(f"<h3>{esc(s['source_modality'])} → {esc(s['target_modality'])} on the unseen protocol "
                   f"(experiment <code>{esc(exp)}</code>)</h3>" + experiment_table(exp, s, params, summary))
    sec.append("</section>")
    sections.append("".join(sec))
    sections.append(f'<section id="sampler"><h2>Sampling settings</h2>{sampler_section(summary)}</section>')
    sections.append(f'<section id="diagnostics"><h2>Diagnostics</h2>{diagnostics_section(diagnostics, params)}'
                    "</section>")
    sections.append('<section id="baselines"><h2>Baseline checks</h2><p class="lead">Is each competitor trained? '
                    "What its generator makes on its own, apart from the translation it is scored on; the training "
                    "curves are in the Figures section.</p>" + baselines_section(baselines, params) + "</section>")
    sections.append('<section id="figures"><h2>Figures</h2>' + "".join(_figure_html(i) for i in figs.items)
                    + "</section>")
    sections.append(f'<section id="timings"><h2>Methods and timings</h2>{timings_table(summary, params)}</section>')
    sections.append(f'<section id="data"><h2>Data</h2>{data_section(params, slices_dir, splits)}</section>')
    proto = "".join(f"<tr><th scope=\"row\">{esc(k)}</th><td>{esc(v)}</td></tr>"
                    for k, v in protocol_items(params, summary, models_dir, _read_manifest(slices_dir)))
    sections.append('<section id="protocol"><h2>Protocol choices the paper does not state</h2>'
                    '<p class="lead">Each is a key in params.yaml or fixed in code (named in the README).</p>'
                    f'<table class="kv"><tbody>{proto}</tbody></table></section>')
    sections.append(f'<section id="params"><h2>Parameters</h2><p class="lead">The complete parameters of this run '
                    f"(<code>{esc(params_path)}</code> with every default filled in), preset "
                    f"<code>{esc(params.preset)}</code>.</p><pre><code>{esc(params_text)}</code></pre></section>")
    dirty = " (working tree has uncommitted changes)" if git["dirty"] else ""
    env_items = [("git commit", esc(git["commit"] + dirty)),
                 ("report built on", esc(f"{dev['platform']}; CPU {dev['cpu']} × {dev['cpu_count']}; "
                                         f"CUDA: {dev['cuda']}"))]
    env_items += [(k, esc(v)) for k, v in vers.items()]
    sections.append(f'<section id="software"><h2>Software and device</h2>{_kv_table(env_items)}</section>')

    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in (
        ("results", "Main table"), ("second-source", "Second source"), ("unseen-protocol", "Unseen protocol"),
        ("sampler", "Sampling"),
        ("diagnostics", "Diagnostics"), ("baselines", "Baselines"),
        ("figures", "Figures"), ("timings", "Timings"), ("data", "Data"), ("protocol", "Protocol"),
        ("params", "Parameters"), ("software", "Software")))
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(params.report.title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><div class="wrap"><h1>{esc(params.report.title)}</h1>
<p>Generated {esc(now)} · preset {esc(params.preset)} · data {esc(params.data.source)} ·
commit {esc(git['commit'][:12])}</p>
</div></header>
<nav><div class="wrap">{nav}</div></nav>
<main class="wrap">
{_preset_notice(params)}
{chr(10).join(sections)}
</main>
<footer class="wrap">Built by <code>lmid report</code>. Numbers in shaded rows are quoted from the paper
({esc(PAPER_LABEL)}); every other number was computed by this pipeline.</footer>
</body>
</html>
"""
    write_text(out_path, page)
    return out_path
