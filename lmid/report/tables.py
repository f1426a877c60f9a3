"""The report's tables as data: rows of formatted cells, no HTML (the template draws them).

A table is ``{"id", "cls", "head", "rows"}``; ``head`` holds header cells (text, or
``{"text", "role"}``); a row is ``{"cls", "th", "tag", "cells"}`` with ``th`` the row header (or
None) and each cell a :func:`cell`.
"""

from __future__ import annotations

from pathlib import Path

from lmid.errors import LmidError
from lmid.evaluation.claims import translation_needed_note
from lmid.evaluation.display import DISPLAY, column_title, method_order, role
from lmid.evaluation.tables import (
    Cell,
    fmt,
    plain,
    protocol_description,
    smallest_nfe_sentence,
    stat,
    table_rows,
)
from lmid.io import read_json


def cell(text, cls: str | None = None, bold: bool = False, ci: str | None = None) -> dict:
    return {"text": "" if text is None else str(text), "cls": cls, "bold": bold, "ci": ci}


def row(th, cells: list, cls: str | None = None, tag: str | None = None) -> dict:
    return {"th": th, "cells": [c if isinstance(c, dict) else cell(c) for c in cells], "cls": cls, "tag": tag}


def table(tid: str, head: list, rows: list, cls: str = "results") -> dict:
    return {"id": tid, "cls": cls, "head": head, "rows": rows}


def html_cell(c: Cell) -> dict:
    return cell(c.value(), "na" if c.missing else None, c.bold, c.interval())


def stat_cell(st: dict | None, decimals: int, bold: bool = False) -> dict:
    """mean ± std [CI] of one score, "not run" without a method, "—" without a value."""
    return html_cell(stat(st, decimals, bold))


# ------------------------------------------------------------------------------------ results
#: The row class of the stylesheet per row kind (ours: "ours" or, beside the headline scores, "secondary").
ROW_CLASS = {"paper": "paper", "p": "pval", "n": "pval"}


def experiment_table(exp: str, s: dict, params, summary: dict) -> dict:
    """One experiment's results: the rows of table.md (lmid.evaluation.tables.table_rows) as HTML cells."""
    methods = s.get("table_methods", s["method_order"])
    rows = table_rows(s, methods, exp == summary["main_experiment"], summary["reference_method"])
    head = [f"{s['source_modality']} → {s['target_modality']}"]
    head += [{"text": DISPLAY.get(m, m), "role": role(m, params)} for m in methods]
    body = [
        row(
            r.label,
            [html_cell(c) for c in r.cells],
            ROW_CLASS.get(r.kind, "secondary" if r.secondary else "ours"),
            tag=r.tag,
        )
        for r in rows
    ]
    return {**table(f"table-{exp}", head, body), "caption": s["caption"]}


def protocol_shift(summary: dict, params) -> dict | None:
    """Dice on the main and the unseen protocol per method, with the change and its CI; None if not run."""
    shift = summary.get("protocol_shift") or {}
    if shift.get("status") != "ok":
        return None
    out = []
    for exp, e in shift["experiments"].items():
        methods = [m for m in summary["experiments"][exp]["method_order"] if m in e["methods"]]
        rows = [
            row(label, [fmt(e["methods"][m][key]) for m in methods])
            for key, label in (("main", "Dice, main protocol"), ("unseen", "Dice, unseen protocol"))
        ]
        changes = [e["methods"][m]["change"] for m in methods]
        rows.append(
            row(
                "change",
                [cell(f"{c['mean']:+.2f}", ci=f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]") for c in changes],
                "ours",
            )
        )
        out.append(
            {
                "experiment": exp,
                "unseen": e["unseen_experiment"],
                "table": table(f"shift-{exp}", ["Dice"] + [column_title(m, params) for m in methods], rows),
            }
        )
    return {"lead": protocol_description(params), "experiments": out}


def claims_table(summary: dict, params) -> dict | None:
    """One row per claim of the paper (lmid/evaluation/claims.py); None before claims were computed."""
    claims = summary.get("claims") or {}
    if not claims.get("rows"):
        return None
    body = []
    for r in claims["rows"]:
        if r["difference"] is None:
            diff, p = cell("—"), "—"
        else:
            diff = cell(f"{r['difference']:+.3f}", ci=f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
            p = "< 0.001" if r["p"] < 0.001 else f"{r['p']:.3f}"
        verdict = cell(r["verdict"], cls="verdict-" + r["verdict"].replace(" ", "-"), bold=True)
        other = column_title(r["other"], params) if r["other"] else "—"
        body.append(row(r["claim"], [r["experiment"], other, diff, p, verdict, r["detail"] or ""]))
    pct = round(100 * claims["confidence"])
    c = claims["counts"]
    return {
        **table("claims", ["Claim", "Experiment", "vs", "LMIDiffusion − other", "p", "Verdict", "Note"], body),
        "caption": f"Difference per slice on the same test slices, mean [{pct} % subject-level bootstrap CI, "
        f"{claims['bootstrap']} resamples]; p: two-sided paired Wilcoxon over slices. Supported: the "
        "interval lies above 0; contradicted: below 0; not supported: it contains 0. "
        f"{c['supported']} supported, {c['not supported']} not supported, {c['contradicted']} "
        f"contradicted, {c['not tested']} not tested."
        + (" " + note if (note := translation_needed_note(claims, lambda m: DISPLAY.get(m, m))) else ""),
    }


def sampler_tables(summary: dict) -> dict:
    """The sampler sweep and SDEdit's t0 sweep; ``None`` for a sweep that was not run."""
    sampler = summary.get("sampler", {})
    out: dict = {"sampler": None, "t0": None}
    if sampler.get("status") == "ok":
        rows = [
            row(
                r["setting"],
                [r["kind"], r["steps"], fmt(r["nfe_per_slice"], 0), fmt(r["wall_s_per_slice"], 3)]
                + [stat_cell(r[k], d) for k, d in (("dice", 3), ("psnr", 2), ("ssim", 3))]
                + [r["n"]],
            )
            for r in sampler["settings"]
        ]
        out["sampler"] = {
            **table(
                "table-sampler",
                ["setting", "sampler", "steps", "NFE / slice", "s / slice", "Dice", "PSNR (dB)", "SSIM", "n"],
                rows,
            ),
            "dice": "vs ground truth"
            if sampler["settings"][0]["dice_key"] == "dice_gt"
            else "vs K-Means of the target",
            "smallest_nfe": smallest_nfe_sentence(sampler.get("smallest_nfe"), sampler.get("test_sampler")),
        }
    t0 = summary.get("sdedit_t0", {})
    if t0.get("status") == "ok":
        cols = t0["columns"]
        out["t0"] = {
            **table(
                "table-sdedit-t0",
                cols,
                [row(None, [plain(r.get(c)) for c in cols]) for r in t0["rows"]],
                "results narrow",
            ),
            "chosen": t0.get("chosen_t0"),
        }
    return out


def diagnostics_tables(diagnostics: dict | None, params) -> dict | None:
    """Conditioning ablation and oracle (``lmid diagnose``); None if not run."""
    if not diagnostics:
        return None
    ab = diagnostics["ablation"]
    rows = [
        row(None, [r["t"], fmt(r["loss_true"], 4), fmt(r["loss_shuffled"], 4), fmt(r["ratio"], 2)])
        for r in ab["timesteps"]
    ]
    rows.append(row("mean", [fmt(ab["loss_true"], 4), fmt(ab["loss_shuffled"], 4), fmt(ab["ratio"], 2)]))
    tgt, src = params.data.target_modality, params.data.source_modality
    keys = (
        ("dice_gt_mean", "Dice vs ground truth", 3),
        ("dice_km_mean", f"Dice vs K-Means of real {tgt}", 3),
        ("psnr", "PSNR (dB)", 2),
        ("ssim", "SSIM", 3),
        ("ssim_mask", "SSIM in brain", 3),
        ("contrast_wm_gm", "contrast WM−GM (× real)", 2),
        ("contrast_gm_csf", "contrast GM−CSF (× real)", 2),
        ("tissue_order", "WM > GM > CSF (fraction)", 2),
    )
    oracle = [
        row(label, [fmt(diagnostics["source"].get(k), d), fmt(diagnostics["oracle"].get(k), d)]) for k, label, d in keys
    ]
    verdict = diagnostics.get("convergence_verdict") or {}
    names = {
        "dice_gt_mean": "Dice vs ground truth",
        "dice_km_mean": f"Dice vs K-Means of real {tgt}",
        "ssim_mask": "SSIM in brain",
        "psnr_mask": "PSNR in brain (dB)",
        "contrast_wm_gm": "contrast WM−GM",
        "contrast_gm_csf": "contrast GM−CSF",
        "oracle_dice_gt_mean": "oracle Dice vs ground truth",
    }
    verdict_rows = [
        row(names.get(k, k), [fmt(v["moved"], 3), fmt(v["half_width"], 3), v["state"]])
        for k, v in (verdict.get("scores") or {}).items()
    ]
    return {
        "verdict": table(
            "table-convergence",
            ["score", "moved in the last third", "CI half-width", "state"],
            verdict_rows,
            "results narrow",
        )
        if verdict_rows
        else None,
        "verdict_span": (verdict.get("from_step"), verdict.get("to_step")),
        "ablation": table(
            "table-ablation", ["t", "ε-loss, true LMI", "ε-loss, LMI of another slice", "ratio"], rows, "results narrow"
        ),
        "oracle": table(
            "table-oracle", ["score", f"{src} → {tgt}", f"{tgt} → {tgt} (oracle)"], oracle, "results narrow"
        ),
        "ablation_slices": ab["slices"],
        "slices": diagnostics["slices"],
        "src": src,
        "tgt": tgt,
    }


def adequacy_tables(baselines: dict | None, summary: dict, params) -> dict | None:
    """Each baseline's adequacy bars, met or missed (lmid.evaluation.adequacy), and what every
    trained method was trained for; None when no baseline of the run has bars."""
    from lmid.evaluation import adequacy

    checks = adequacy.checks(baselines, summary, list(params.methods))
    budget = adequacy.training_budget(summary.get("train_info", {}), method_order(list(params.methods), params))
    if not checks and not budget:
        return None
    rows = [
        row(
            DISPLAY.get(c.method, c.method),
            [
                c.what,
                c.measured if isinstance(c.measured, str) else fmt(c.measured, 3),
                c.bar,
                cell(c.verdict, "pass" if c.passed else "na" if c.passed is None else "fail"),
            ],
        )
        for c in checks
    ]
    spend = [
        row(
            column_title(r["method"], params),
            [r["steps"], "—" if r["images"] is None else f"{r['images']:,}", fmt(r["cpu_hours"], 2)],
        )
        for r in budget
    ]
    return {
        "checks": table("table-adequacy", ["method", "bar on", "measured", "bar", "verdict"], rows, "results narrow")
        if rows
        else None,
        "budget": table(
            "table-budget", ["method", "steps", "images seen", "training CPU-hours"], spend, "results narrow"
        )
        if spend
        else None,
    }


def baselines_tables(baselines: dict | None, params) -> dict | None:
    """The numbers of ``lmid check-baselines`` (are the baselines trained?); None if not run."""
    if not baselines:
        return None
    floor, real = baselines["floor"], baselines["real"]
    entries = [("real target (all test slices)", real), (f"floor: {floor['what']}", floor)]
    for m in ("stylegan2", "sdedit"):
        e = baselines["methods"].get(m)
        if e and e.get("status") == "ok":
            entries.append((f"{DISPLAY.get(m, m)}: {e['what']}", e))
    rows = [
        row(
            label,
            [fmt(e.get(k), 3) for k in ("foreground_fraction", "foreground_mean", "saturated_fraction", "w1_to_real")],
        )
        for label, e in entries
    ]
    out = {
        "table": table(
            "table-baselines",
            ["images", "foreground fraction", "foreground mean", "saturated (> 0.98)", "W₁ to real foreground"],
            rows,
            "results narrow",
        ),
        "samples": baselines["samples"],
        "threshold": f"{baselines['foreground_threshold']:g}",
        "not_ok": [
            (DISPLAY.get(m, m), e.get("status")) for m, e in baselines["methods"].items() if e.get("status") != "ok"
        ],
        "cyclegan": None,
        "sdedit_curve": None,
    }
    sd = baselines["methods"].get("sdedit") or {}
    if sd.get("snapshots"):
        floor_w1 = floor.get("w1_to_real")
        curve_rows = [
            row(
                r["step"],
                [
                    fmt(r.get("w1_to_real"), 4),
                    fmt(r["w1_to_real"] / floor_w1, 1) if r.get("w1_to_real") and floor_w1 else "—",
                    fmt(r.get("foreground_fraction"), 3),
                ],
            )
            for r in sd["snapshots"]
        ]
        out["sdedit_curve"] = table(
            "table-sdedit-curve",
            ["training step", "W₁ to real foreground", "× floor", "foreground fraction"],
            curve_rows,
            "results narrow",
        )
    cg = baselines["methods"].get("cyclegan")
    if cg and cg.get("status") == "ok":
        src, tgt = params.data.source_modality, params.data.target_modality
        items = [
            (f"{src} → {tgt} (G_AB, the translation scored)", cg["psnr_mask_source_to_target"]),
            (f"{tgt} → {src} (G_BA)", cg["psnr_mask_target_to_source"]),
            (f"cycle {src} → {tgt} → {src}", cg["psnr_mask_cycle_source"]),
            (f"cycle {tgt} → {src} → {tgt}", cg["psnr_mask_cycle_target"]),
        ]
        out["cyclegan"] = table(
            "table-cyclegan",
            ["test split", "PSNR in brain (dB)"],
            [row(k, [fmt(v, 2)]) for k, v in items],
            "results narrow",
        )
    return out


def timings_table(summary: dict, params) -> dict:
    infos = summary.get("train_info", {})
    tim = summary.get("timings", {})
    skip = {"method", "access", "train_wall_s", "device", "t0_sweep", "val_sweep", "sweep", "validation", "t0_search"}
    rows = []
    for m in method_order(list(tim), params):
        t = tim[m]
        info = infos.get(m, {})
        facts = "; ".join(f"{k}: {short(v, 80)}" for k, v in info.items() if k not in skip)
        rows.append(
            row(
                column_title(m, params),
                [
                    info.get("access", "—"),
                    fmt(t.get("train_wall_s"), 1),
                    fmt(t.get("translate_wall_s_per_slice"), 3),
                    fmt(t.get("nfe_per_slice"), 0),
                    t.get("device") or "—",
                    cell(facts or "—", "facts"),
                ],
            )
        )
    return table(
        "table-timings",
        [
            "method",
            "training data",
            "train wall time (s)",
            "translate s / slice",
            "NFE / slice",
            "device",
            "facts from train_info.json",
        ],
        rows,
    )


# ------------------------------------------------------------------------- key-value tables
def short(value, limit: int = 240) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k} {short(v, 80)}" for k, v in value.items()) or "none"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(short(v, 80) for v in value) or "none"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: Manifest entries the data section leaves out (shown elsewhere or only for machines).
MANIFEST_HIDDEN = {"format", "params", "labels", "slice_affine_maps"}

#: What each ``data.source`` is, for the data section.
SOURCE_DESCRIPTIONS = {
    "simulated": "simulated multi-contrast brains (MNI152 2009 tissue maps + MR signal equations, per-subject "
    "deformation, bias field, Rician noise; ground-truth labels). Not IXI: absolute numbers are not "
    "comparable with the paper's.",
    "ixi": "IXI (the paper's data set), T1 registered to the PD grid.",
    "brats": "BraTS-style co-registered multi-contrast cases.",
}


def data_items(params, slices_dir: Path, splits: dict) -> list[tuple[str, object]]:
    """(key, value) rows of the data section; a value is text or, for a nested manifest entry, a
    list of (key, text) shown one per line."""
    d = params.data
    items: list[tuple[str, object]] = [
        ("data source", f"{d.source}: {SOURCE_DESCRIPTIONS[d.source]}"),
        (
            "translation",
            f"{d.source_modality} → {d.target_modality}; extra zero-shot sources: "
            f"{', '.join(d.extra_modalities) or 'none'}",
        ),
    ]
    for name, sp in splits.items():
        if sp is None:
            items.append((f"{name} split", "not found"))
            continue
        subjects = sorted(set(sp.subject.tolist()))
        items.append(
            (
                f"{name} split",
                f"{len(sp)} slices of {sp.shape[0]}×{sp.shape[1]} px from {len(subjects)} subjects"
                + (" (with ground-truth labels)" if sp.has_label else " (no ground-truth labels)")
                + f": {', '.join(subjects)}",
            )
        )
    manifest_path = Path(slices_dir) / "manifest.json"
    if not manifest_path.is_file():
        items.append(("manifest", "not found"))
        return items
    try:
        manifest = read_json(manifest_path)
    except LmidError as err:
        manifest = {"error": str(err)}
    for key, value in manifest.items() if isinstance(manifest, dict) else []:
        if key in MANIFEST_HIDDEN:
            continue
        if key == "subjects" and isinstance(value, dict):
            items.append(("manifest: subjects", f"{len(value)} subjects with geometry recorded"))
        elif isinstance(value, dict) and value:
            # One line per entry, so nested counts stay readable.
            items.append((f"manifest: {key}", [(str(k), short(v, 300)) for k, v in value.items()]))
        else:
            items.append((f"manifest: {key}", short(value) if value not in ({}, [], "", None) else "none"))
    return items


def brain_mask_text(manifest: dict) -> str:
    """How ``prepare`` found the brain and corrected the bias field, with the with/without-N4 check."""
    text = f"Brain mask: {manifest.get('brain_mask', 'not recorded')}. Bias field: {manifest.get('bias_correction', 'none')}."
    check = manifest.get("bias_check")
    if isinstance(check, dict):
        text += (
            f" K-Means Dice ceiling on the real target's {check.get('test_slices')} test slices: "
            f"{check['dice_ceiling_with_n4']:.3f} with N4, {check['dice_ceiling_without_n4']:.3f} without "
            f"(applied: {check.get('applied')})."
        )
    return text


def protocol_items(params, summary: dict, models_dir: Path, manifest: dict | None = None) -> list[tuple[str, str]]:
    """The choices the paper does not state, with the values this run used."""
    d, p, ev = params.data, params.prepare, params.evaluate
    infos = summary.get("train_info", {})
    seg_text = f"K = {params.segment.n_clusters} clusters"
    seg_path = Path(models_dir) / "kmeans.json"
    if seg_path.is_file():
        try:
            seg = read_json(seg_path)
            seg_text += (
                f"; centroids {', '.join(f'{c:.3f}' for c in seg.get('centroids', []))} → "
                f"{', '.join(seg.get('mapping_names', []))}"
            )
        except LmidError:
            pass
    sty = infos.get("stylegan2", {})
    # The training info spells the loss out (lmid/methods/stylegan2.py: INVERSION_LOSS_TEXT).
    inversion = sty.get("inversion_loss") or f"stylegan2.invert_loss = {params.stylegan2.invert_loss}"
    t0 = summary.get("sdedit_t0", {})
    sd = infos.get("sdedit", {})
    chosen = t0.get("chosen_t0")
    if chosen is None:
        chosen = next((sd[k] for k in ("t0", "chosen_t0", "best_t0") if k in sd), None)
    sampler = params.lmidiffusion.sampler
    grid = ", ".join(f"{x:g}" for x in params.sdedit.t0_grid)
    site = (
        f"simulated sites {', '.join(params.simulate.sites)} (labels only)"
        if d.source == "simulated"
        else (", ".join(d.sites) if d.sites else "all sites")
    )
    return [
        ("Site", f"Paper: an IXI site, not named. Ours: {site}."),
        (
            "Slice selection",
            f"Axial slices whose brain covers ≥ {p.min_brain_fraction:g} of the brain's bounding box; "
            f"{p.slices.train}/{p.slices.val}/{p.slices.test} train/val/test slices at most, split by "
            f"subject ({p.split.train:g}/{p.split.val:g}/{p.split.test:g}); {p.size}×{p.size} px.",
        ),
        (
            "Registration",
            "T1 registered to the PD grid (rigid then affine, Mattes mutual information)"
            if d.source == "ixi" and d.registration
            else "None needed: all modalities are simulated on one grid."
            if d.source == "simulated"
            else "None (co-registered input)."
            if d.source == "brats"
            else "Disabled (data.registration = false).",
        ),
        ("Brain mask and bias field", brain_mask_text(manifest or {})),
        (
            "Normalisation",
            f"Per volume: clip to the {p.percentiles[0]:g}–{p.percentiles[1]:g} percentiles inside the "
            "brain, then map linearly to [0, 1].",
        ),
        (
            "Segmenter",
            f"K-Means on {d.target_modality} training intensities inside the brain mask only, "
            f"{seg_text}; clusters sorted by centroid intensity and mapped "
            f"{' < '.join(params.segment.tissue_order)}"
            + (
                "; with K ≠ 3 each cluster joins the nearest centroid of a 3-cluster fit"
                if params.segment.n_clusters != 3
                else ""
            )
            + ". Applied unchanged to translations and the real target, inside the test slice's mask.",
        ),
        (
            "Dice",
            "Per slice the unweighted mean of CSF, GM and WM Dice, then mean over slices; a class absent from "
            "both segmentations scores 1, absent from one 0. Against ground truth when the data has labels, "
            "else against K-Means of the real target (both are reported).",
        ),
        (
            "PSNR / SSIM",
            "Against the real registered target slice, both on [0, 1], data range 1; whole slice in the "
            "main rows (PSNR capped at 100 dB), brain mask only in the 'in brain' rows (SSIM: mean of the "
            "full SSIM map over mask pixels). SSIM: scikit-image defaults (7×7 uniform window, "
            "K1 = 0.01, K2 = 0.03).",
        ),
        (
            "StyleGAN2 inversion loss",
            "Paper/reference projector: LPIPS-VGG, whose pretrained weights cannot be "
            "downloaded here. Ours: " + (f"{inversion}." if inversion else "see lmid/methods/stylegan2.py."),
        ),
        (
            "SDEdit t0",
            f"Chosen on validation slices from t0/T ∈ {{{grid}}}"
            + (f": {chosen}" if chosen is not None else "")
            + f"; {params.sdedit.repeats} repeat(s).",
        ),
        (
            "LMI layer",
            f"{params.lmi.mode} mode, window {params.lmi.window}, {params.lmi.bins} bins, σ = {params.lmi.sigma:g}.",
        ),
        (
            "LMIDiffusion sampler",
            f"{sampler.kind}, {sampler.steps} steps, start from {sampler.start}, "
            f"{sampler.samples} sample(s) per slice (paper: 1000 ancestral steps from noise, "
            "one sample).",
        ),
        (
            "Statistics",
            f"{100 * ev.confidence:g} % percentile bootstrap CI of the mean ({ev.bootstrap} resamples of "
            "whole test subjects, seeded: slices of one subject are not independent); two-sided paired "
            f"Wilcoxon signed-rank test over slices against "
            f"{DISPLAY.get(ev.reference_method, ev.reference_method)}, which is optimistic for the same "
            "reason. The sampler table resamples slices.",
        ),
    ]
