"""``lmid aggregate``: per-slice metrics → the paper's table, DVC metrics and a summary.

Inputs, each file named on the command line (nothing else is read):

* ``--scores .../<experiment>/<method>.csv`` written by ``lmid evaluate``; experiment ``pd2t1``
  is the main one (``data.source_modality`` → ``data.target_modality``), others (``t22t1``,
  ``pd2t1_3t``) are zero-shot extra sources and the unseen protocol (lmid/experiments.py).
* ``--sampler .../<kind>-<steps>[-<spacing>].csv`` (optional): LMIDiffusion at other sampler
  settings.
* ``--infos .../<method>/train_info.json`` (optional): training time and method facts, SDEdit's
  validation t0 sweep.
* ``--manifest manifest.json`` (optional): the data description recorded in ``summary.json``.

Outputs under ``<out-dir>`` (:func:`aggregate_outputs` lists them for given params):

* ``metrics.json``: DVC metrics, ``{experiment: {method: {dice, dice_km, psnr, ...}}}`` plus
  ``sampler`` settings, means rounded to 6 decimals, keys sorted (same inputs → same bytes).
* ``summary.json``: everything the HTML report shows (means, std, bootstrap CIs, Wilcoxon p,
  timings, sampler table, t0 sweep), deterministic as well.
* ``tables/table.md`` (every table as one Markdown document), ``tables/table.{csv,tex}`` (main
  experiment), ``tables/table_<experiment>.{csv,tex}`` (the others), ``tables/sampler.{csv,tex}``
  and ``tables/sdedit_t0.csv`` (when those were run).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np

from lmid.config import SAMPLER_SETTING, parse_sampler_setting
from lmid.errors import InputFileError, LmidError
from lmid.evaluation.metrics import read_metrics_csv
from lmid.evaluation.stats import summarise, wilcoxon_p
from lmid.io import read_json, write_json, write_text
from lmid.experiments import (experiment_modalities, experiment_name, is_unseen_experiment,  # noqa: F401
                              unseen_experiment)
from lmid.registry import METHOD_NAMES, METHODS

log = logging.getLogger(__name__)

#: The paper's Table (PD → T1 on IXI; docs/method.md §2): (mean, std) over its 75 test slices.
PAPER = {
    "cyclegan": {"dice": (0.85, 0.07), "psnr": (18.88, 1.26), "ssim": (0.27, 0.04)},
    "stylegan2": {"dice": (0.66, 0.10), "psnr": (10.15, 1.49), "ssim": (0.06, 0.03)},
    "sdedit": {"dice": (0.82, 0.06), "psnr": (15.96, 1.54), "ssim": (0.50, 0.06)},
    "lmidiffusion": {"dice": (0.88, 0.05), "psnr": (20.22, 1.43), "ssim": (0.69, 0.06)},
}
PAPER_LABEL = "paper (IXI, not our data)"
#: Views of lmid/registry.py: column names, column order (the paper's four, then the upper bound
#: and the references), and the methods that compete with LMIDiffusion (best of them bold).
DISPLAY = {name: spec.display for name, spec in METHODS.items()}
ORDER = METHOD_NAMES
COMPETITORS = tuple(name for name, spec in METHODS.items() if spec.competitor)
#: Table rows: (key in the summary, label, decimals).
ROWS = (("dice", "Dice", 2), ("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 2))
#: Every per-slice column summarised (summary key → CSV column).
SUMMARY_COLUMNS = {
    "dice_gt": "dice_gt_mean", "dice_km": "dice_km_mean", "psnr": "psnr", "ssim": "ssim",
    "psnr_mask": "psnr_mask", "ssim_mask": "ssim_mask",
    "dice_gt_csf": "dice_gt_csf", "dice_gt_gm": "dice_gt_gm", "dice_gt_wm": "dice_gt_wm",
    "dice_km_csf": "dice_km_csf", "dice_km_gm": "dice_km_gm", "dice_km_wm": "dice_km_wm",
    "contrast_wm_gm": "contrast_wm_gm", "contrast_gm_csf": "contrast_gm_csf", "tissue_order": "tissue_order",
    "dice_ceiling": "dice_ceiling",
}
#: Offset added to params.seed for the bootstrap generator.
BOOTSTRAP_SEED_OFFSET = 907
SAMPLER_RE = re.compile(SAMPLER_SETTING)


def role(method: str, params=None) -> str:
    """What a column is, in a few words (shown under the method's name)."""
    if method not in METHODS:
        return ""
    text = METHODS[method].role
    if "{source_fraction}" in text:  # CycleGAN: how much of the source it may see
        frac = params.cyclegan.source_fraction if params is not None else 0.11
        text = text.replace("{source_fraction}", f"{100 * frac:g} %")
    return text


def column_title(method: str, params=None) -> str:
    r = role(method, params)
    name = DISPLAY.get(method, method)
    return f"{name} ({r})" if r else name


def protocol_description(params) -> str:
    """One sentence on the unseen protocol, for the Markdown table and the HTML report."""
    u = params.unseen_protocol
    seqs = ", ".join(f"{m} TR {q.tr_ms:g} / TE {q.te_ms:g} ms" for m, q in u.sequences.items())
    snr = u.snr if u.snr is not None else params.simulate.snr
    return (f"The test subjects simulated again on a protocol no model was trained on ({seqs}; tissue T1/T2 of "
            f"another field strength; SNR {snr:g}), translated by the models trained on the main protocol as they "
            "are. Change = unseen − main, paired over the same slices, [subject-level bootstrap CI].")


def protocol_shift(summary: dict, frames_by_exp: dict, params, n_boot: int, confidence: float, seed: int) -> dict:
    """Per experiment and method: Dice on the main protocol, on the unseen one, and the change.

    The unseen protocol simulates the same subjects, so slices pair up by (subject, slice index):
    the change is a paired difference, its CI a subject-level bootstrap of the per-slice changes.
    """
    out = {}
    if not params.unseen_protocol_active:
        return {"status": "not run"}
    for exp, e in summary["experiments"].items():
        twin = unseen_experiment(exp, params)
        if twin not in summary["experiments"]:
            continue
        key = SUMMARY_COLUMNS[e["dice_key"]]
        rows = {}
        for method, df in frames_by_exp[exp].items():
            other = frames_by_exp[twin].get(method)
            if other is None or key not in other.columns:
                continue
            pairs = df[["subject", "slice_index", key]].merge(
                other[["subject", "slice_index", key]], on=["subject", "slice_index"], suffixes=("", "_unseen"))
            delta = pairs[f"{key}_unseen"].to_numpy(dtype=float) - pairs[key].to_numpy(dtype=float)
            rows[method] = {
                "main": float(np.nanmean(df[key].to_numpy(dtype=float))),
                "unseen": float(np.nanmean(other[key].to_numpy(dtype=float))),
                "change": summarise(delta, n_boot, confidence, seed, groups=pairs["subject"].astype(str).to_numpy()),
                "pairs": int(len(pairs)),
            }
        out[exp] = {"unseen_experiment": twin, "dice_key": e["dice_key"], "methods": rows}
    return {"status": "ok", "protocol": params.unseen_protocol.model_dump(mode="json"), "experiments": out} if out \
        else {"status": "not run"}


def protocol_shift_markdown(shift: dict, params) -> str:
    if shift.get("status") != "ok":
        return ""
    lines = [f"## Unseen protocol `{params.unseen_protocol.name}`: Dice without retraining", "",
             protocol_description(params), ""]
    for exp, e in shift["experiments"].items():
        methods = method_order(list(e["methods"]), params)
        lines += [f"### `{exp}` → `{e['unseen_experiment']}`", "",
                  "| Dice | " + " | ".join(column_title(m, params) for m in methods) + " |",
                  "|---|" + "---|" * len(methods)]
        lines.append("| main protocol | " + " | ".join(fmt(e["methods"][m]["main"]) for m in methods) + " |")
        lines.append("| unseen protocol | " + " | ".join(fmt(e["methods"][m]["unseen"]) for m in methods) + " |")
        lines.append("| change | " + " | ".join(
            f"{e['methods'][m]['change']['mean']:+.2f} [{e['methods'][m]['change']['ci_low']:+.2f}, "
            f"{e['methods'][m]['change']['ci_high']:+.2f}]" for m in methods) + " |")
        lines.append("")
    return "\n".join(lines)


def method_order(methods, params=None) -> list[str]:
    preferred = list(ORDER)
    if params is not None:
        preferred += [m for m in params.methods if m not in preferred]
    known = [m for m in preferred if m in methods]
    return known + sorted(m for m in methods if m not in known)


# ------------------------------------------------------------------------------------ helpers
def clean(obj, ndigits: int = 6):
    """Round floats, NaN/Inf → None, numpy → Python: what a deterministic JSON file needs."""
    if isinstance(obj, dict):
        return {str(k): clean(v, ndigits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v, ndigits) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if not math.isfinite(x):
            return None
        x = round(x, ndigits)
        return 0.0 if x == 0 else x
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def fmt(x, decimals: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{decimals}f}"


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "—"
    if p < 1e-3:
        return "< 0.001"
    return f"{p:.3f}"


def _dice_key(frames: dict) -> str:
    """Dice vs ground truth when every slice of every method has it, else vs K-Means of the target."""
    for df in frames.values():
        if "dice_gt_mean" not in df.columns or not np.all(np.isfinite(df["dice_gt_mean"].to_numpy(dtype=float))):
            return "dice_km"
    return "dice_gt"


# ----------------------------------------------------------------------------------- summaries
def summarise_experiment(frames: dict, reference: str, n_boot: int, confidence: float, seed: int) -> dict:
    """Per method: every metric's mean/std/CI and the paired Wilcoxon p against ``reference``."""
    dice_key = _dice_key(frames)
    ref = frames.get(reference)
    out = {"dice_reference": "ground truth" if dice_key == "dice_gt" else "K-Means of the real target",
           "dice_key": dice_key, "methods": {}}
    for method, df in frames.items():
        # Subject-level bootstrap: slices of one subject are not independent (lmid/evaluation/stats.py).
        subjects = df["subject"].astype(str).to_numpy() if "subject" in df.columns else None
        entry: dict = {"n": int(len(df)),
                       "n_subjects": int(len(set(subjects))) if subjects is not None else None}
        for key, col in SUMMARY_COLUMNS.items():
            if col in df.columns:
                entry[key] = summarise(df[col].to_numpy(dtype=float), n_boot, confidence, seed, groups=subjects)
        entry["dice"] = dict(entry.get(dice_key, summarise([], n_boot, confidence, seed)))
        for key in ("dice", "psnr", "ssim", "dice_km", "psnr_mask", "ssim_mask", "contrast_wm_gm", "contrast_gm_csf"):
            if key not in entry:
                continue
            col = SUMMARY_COLUMNS[dice_key] if key == "dice" else SUMMARY_COLUMNS[key]
            entry[key]["p_vs_reference"] = _paired_p(df, ref, col) if ref is not None and method != reference else None
        entry["nfe_per_slice"] = _mean(df, "nfe")
        entry["wall_s_per_slice"] = _mean(df, "wall_s")
        out["methods"][method] = entry
    return out


def _mean(df, col):
    if col not in df.columns:
        return None
    x = df[col].to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def _paired_p(df, ref, col) -> float | None:
    """Wilcoxon on the slices both methods scored (matched on the split index)."""
    if col not in df.columns or col not in ref.columns:
        return None
    merged = df[["index", col]].merge(ref[["index", col]], on="index", suffixes=("", "_ref"))
    if merged.empty:
        return None
    return wilcoxon_p(merged[col].to_numpy(dtype=float), merged[f"{col}_ref"].to_numpy(dtype=float))


def summarise_sampler(files, n_boot: int, confidence: float, seed: int, order: list[str]) -> dict:
    """The sampler table from ``<setting>.csv`` score files (LMIDiffusion on validation slices)."""
    settings = []
    files = sorted(map(Path, files))
    for csv in files:
        m = SAMPLER_RE.fullmatch(csv.stem)
        if not m:
            log.warning("%s: not named <ancestral|ddim>-<steps>.csv; left out of the sampler table", csv)
            continue
        df = read_metrics_csv(csv)
        frames = {csv.stem: df}
        dice_key = _dice_key(frames)
        spec = parse_sampler_setting(csv.stem)
        row = {"setting": csv.stem, "kind": spec["kind"], "steps": spec["steps"], "spacing": spec["spacing"],
               "n": int(len(df)),
               "dice_key": dice_key,
               "dice": summarise(df[SUMMARY_COLUMNS[dice_key]].to_numpy(dtype=float), n_boot, confidence, seed),
               "psnr": summarise(df["psnr"].to_numpy(dtype=float), n_boot, confidence, seed),
               "ssim": summarise(df["ssim"].to_numpy(dtype=float), n_boot, confidence, seed),
               "nfe_per_slice": _mean(df, "nfe"), "wall_s_per_slice": _mean(df, "wall_s")}
        settings.append(row)
    if not settings:
        return {"status": "not run"}
    rank = {s: i for i, s in enumerate(order)}
    settings.sort(key=lambda r: (rank.get(r["setting"], len(rank)), r["kind"], -r["steps"]))
    return {"status": "ok", "settings": settings, "smallest_nfe": smallest_nfe_within_ci(settings)}


def smallest_nfe_sentence(entry: dict | None) -> str:
    if not entry:
        return ""
    return (f"Best mean Dice: {entry['best']} ({fmt(entry['best_mean'], 3)}, CI from {fmt(entry['ci_low'], 3)}). "
            f"Fewest network evaluations with a mean inside that interval: {entry['setting']} "
            f"({fmt(entry['nfe_per_slice'], 0)} per slice, Dice {fmt(entry['mean'], 3)}).")


def smallest_nfe_within_ci(settings: list[dict], key: str = "dice") -> dict | None:
    """The setting with the fewest network evaluations whose mean lies inside the confidence
    interval of the best setting's mean (by ``key``): the cheapest sampler that is as good."""
    scored = [r for r in settings if r[key].get("mean") is not None and math.isfinite(r[key]["mean"])
              and r.get("nfe_per_slice") is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: r[key]["mean"])
    lo = best[key].get("ci_low")
    lo = best[key]["mean"] if lo is None or not math.isfinite(lo) else lo
    cheapest = min((r for r in scored if r[key]["mean"] >= lo), key=lambda r: (r["nfe_per_slice"], r["setting"]))
    return {"metric": key, "best": best["setting"], "best_mean": best[key]["mean"], "ci_low": lo,
            "setting": cheapest["setting"], "nfe_per_slice": cheapest["nfe_per_slice"],
            "mean": cheapest[key]["mean"]}


#: Keys tried, in order, for SDEdit's validation sweep and its chosen t0 in train_info.json.
T0_SWEEP_KEYS = ("t0_sweep", "val_sweep", "t0_search", "sweep", "validation")
T0_CHOSEN_KEYS = ("t0", "chosen_t0", "best_t0", "t0_chosen", "t0_frac")


def sdedit_sweep(info: dict | None) -> dict:
    """SDEdit's validation t0 sweep from its train_info.json, as rows of a table."""
    if not info:
        return {"status": "not run"}
    raw = next((info[k] for k in T0_SWEEP_KEYS if k in info), None)
    chosen = next((info[k] for k in T0_CHOSEN_KEYS if k in info and not isinstance(info[k], (dict, list))), None)
    rows: list[dict] = []
    if isinstance(raw, list):
        rows = [dict(r) if isinstance(r, dict) else {"value": r} for r in raw]
    elif isinstance(raw, dict):
        for t0, val in raw.items():
            row = {"t0": _maybe_float(t0)}
            row.update(val if isinstance(val, dict) else {"score": val})
            rows.append(row)
    if not rows:
        return {"status": "not run", "chosen_t0": chosen}
    columns: list[str] = ["t0"] if any("t0" in r for r in rows) else []
    for r in rows:
        columns += [k for k in r if k not in columns]
    return {"status": "ok", "chosen_t0": chosen, "columns": columns, "rows": rows}


def _maybe_float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return x


# ------------------------------------------------------------------------------------- tables
def _cell(stats: dict | None, decimals: int, bold: bool = False, ci: bool = True) -> str:
    if stats is None:
        return "not run"
    if stats.get("mean") is None or not math.isfinite(stats["mean"]):
        return "—"
    text = f"{fmt(stats['mean'], decimals)} ± {fmt(stats['std'], decimals)}"
    if bold:
        text = f"**{text}**"
    if ci and stats.get("ci_low") is not None and math.isfinite(stats["ci_low"]):
        text += f" [{fmt(stats['ci_low'], decimals)}, {fmt(stats['ci_high'], decimals)}]"
    return text


def best_method(summary: dict, key: str, methods: list[str]) -> str | None:
    """The competitor with the highest mean (all three metrics are higher-is-better)."""
    cands = []
    for m in methods:
        mean = (summary["methods"].get(m, {}).get(key) or {}).get("mean")
        if m in COMPETITORS and mean is not None and math.isfinite(mean):
            cands.append((mean, m))
    return max(cands)[1] if len(cands) > 1 else None


def method_stats(summary: dict, method: str, key: str) -> dict | None:
    """A method's statistics of one metric; None when the method was not run, {} when the metric is missing."""
    if method not in summary["methods"]:
        return None
    return summary["methods"][method].get(key) or {}


def table_rows(summary: dict, methods: list[str], with_paper: bool, reference: str) -> list[tuple[str, list[str], str]]:
    """Rows of one experiment's table as (label, cells, kind) with kind in ours/paper/p/n."""
    rows = []

    def paper_row(key: str, label: str) -> None:
        if with_paper:
            cells = [f"{PAPER[m][key][0]:.2f} ± {PAPER[m][key][1]:.2f}" if m in PAPER else "—" for m in methods]
            rows.append((f"{label} — {PAPER_LABEL}", cells, "paper"))

    for key, label, dec in ROWS:
        best = best_method(summary, key, methods)
        rows.append((label, [_cell(method_stats(summary, m, key), dec, bold=(m == best)) for m in methods], "ours"))
        # IXI has no tissue labels, so the paper's Dice is most plausibly against K-Means of the
        # real T1: its row stands beside ours of that kind.
        if key != "dice" or summary["dice_key"] != "dice_gt":
            paper_row(key, label)
        if key == "dice" and summary["dice_key"] == "dice_gt":
            rows.append(("Dice vs K-Means of real target",
                         [_cell(method_stats(summary, m, "dice_km"), 2) for m in methods], "ours"))
            paper_row("dice", "Dice")
            rows.append(("Dice ceiling: K-Means on the real target",
                         [_cell(method_stats(summary, m, "dice_ceiling"), 2, ci=False) for m in methods], "ours"))
    rows.append(("Tissue contrast WM−GM (× real)",
                 [_cell(method_stats(summary, m, "contrast_wm_gm"), 2) for m in methods], "ours"))
    rows.append(("Tissue contrast GM−CSF (× real)",
                 [_cell(method_stats(summary, m, "contrast_gm_csf"), 2) for m in methods], "ours"))
    rows.append(("WM > GM > CSF (fraction of slices)",
                 [_cell(method_stats(summary, m, "tissue_order"), 2, ci=False) for m in methods], "ours"))
    rows.append(("PSNR in brain (dB)", [_cell(method_stats(summary, m, "psnr_mask"), 2) for m in methods], "ours"))
    rows.append(("SSIM in brain", [_cell(method_stats(summary, m, "ssim_mask"), 2) for m in methods], "ours"))
    ref_name = DISPLAY.get(reference, reference)
    for key, label, _ in ROWS:
        rows.append((f"p {label.split()[0]} (Wilcoxon vs {ref_name})",
                     ["ref." if m == reference else "—" if method_stats(summary, m, key) is None
                      else fmt_p(method_stats(summary, m, key).get("p_vs_reference")) for m in methods], "p"))
    rows.append(("subjects (n)", [str(summary["methods"][m].get("n_subjects") or "—") if m in summary["methods"]
                                  else "0" for m in methods], "n"))
    rows.append(("slices (n)", [str(summary["methods"][m]["n"]) if m in summary["methods"] else "0"
                                for m in methods], "n"))
    return rows


def caption(summary: dict, source: str, target: str, confidence: float, n_boot: int, reference: str,
            with_paper: bool) -> str:
    dice = ("Dice against the ground-truth labels" if summary["dice_key"] == "dice_gt"
            else f"Dice against K-Means of the real {target} slice (no ground-truth labels)")
    text = (f"{source} → {target}. {dice}: per slice the unweighted mean over CSF, GM and WM, then mean ± std over "
            f"test slices, [{100 * confidence:g} % percentile bootstrap CI of the mean, {n_boot} resamples of whole "
            f"subjects, since slices of one subject are not independent]. PSNR/SSIM "
            f"against the real {target} slice on [0, 1] (data range 1), whole slice; 'in brain' rows use the brain "
            f"mask only. p: two-sided paired Wilcoxon signed-rank test over slices against "
            f"{DISPLAY.get(reference, reference)}. "
            f"Bold: best of the paper's four methods.")
    n_subjects = [e.get("n_subjects") for e in summary["methods"].values() if e.get("n_subjects")]
    if n_subjects and min(n_subjects) < 10:
        text += (f" Only {min(n_subjects)} test subjects: an interval from resampling so few subjects is rough "
                 "(with 2 it can collapse onto the subject means).")
    if with_paper:
        text += (" Rows marked 'paper' are the published numbers on IXI (300 training / 75 test slices), "
                 "not computed on our data: compare trends, not values.")
    return text


def markdown_table(title: str, cap: str, rows, methods: list[str], params, first: str) -> str:
    head = "| " + " | ".join([first] + [column_title(m, params) for m in methods]) + " |"
    sep = "|" + "---|" * (len(methods) + 1)
    body = ["| " + " | ".join([label] + cells) + " |" for label, cells, _ in rows]
    return "\n".join([f"## {title}", "", cap, "", head, sep, *body, ""])


def latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("→", r"$\rightarrow$"), ("±", r"$\pm$"), ("—", "--"), ("<", r"$<$")):
        text = text.replace(a, b)
    return re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", text)


def latex_table(cap: str, rows, methods: list[str], params, first: str, label: str) -> str:
    cols = "l" + "c" * len(methods)
    lines = [
        "% Generated by `lmid aggregate`; needs \\usepackage{booktabs}.",
        "\\begin{table}[t]", "\\centering", "\\scriptsize",
        f"\\caption{{{latex_escape(cap)}}}", f"\\label{{{label}}}",
        f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
        " & ".join(latex_escape(c) for c in [first] + [column_title(m, params) for m in methods]) + " \\\\",
        "\\midrule",
    ]
    prev = None
    for row_label, cells, kind in rows:
        if prev is not None and kind != prev and kind in ("p", "n"):
            lines.append("\\midrule")
        lines.append(" & ".join(latex_escape(c) for c in [row_label] + cells) + " \\\\")
        prev = kind
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def tidy_rows(experiment: str, summary: dict, methods: list[str], with_paper: bool) -> list[dict]:
    out = []
    for m in methods:
        entry = summary["methods"].get(m, {})
        for key in ("dice", "dice_km", "dice_gt", "psnr", "ssim", "psnr_mask", "ssim_mask", "contrast_wm_gm",
                    "contrast_gm_csf", "tissue_order", "dice_ceiling"):
            st = entry.get(key)
            if not st or not st["n"]:
                continue
            out.append({"experiment": experiment, "source": "ours", "method": m, "metric": key,
                        "dice_reference": summary["dice_reference"] if key == "dice" else "",
                        "n": st["n"], "mean": st["mean"], "std": st["std"], "ci_low": st["ci_low"],
                        "ci_high": st["ci_high"], "p_vs_reference": st.get("p_vs_reference")})
        if with_paper and m in PAPER:
            for key, (mean, std) in PAPER[m].items():
                out.append({"experiment": experiment, "source": PAPER_LABEL, "method": m, "metric": key,
                            "dice_reference": "ground truth" if key == "dice" else "", "n": 75, "mean": mean,
                            "std": std, "ci_low": None, "ci_high": None, "p_vs_reference": None})
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    write_text(path, pd.DataFrame(clean(rows)).to_csv(index=False, float_format="%.6g", na_rep=""))


def sampler_markdown(sampler: dict, t0: dict) -> str:
    lines = ["## LMIDiffusion sampler settings", ""]
    if sampler.get("status") != "ok":
        lines += ["Not run (no `data/metrics/sampler/*.csv`).", ""]
    else:
        lines += ["LMIDiffusion with several samplers on the same validation slices (one sample each). "
                  "Time per slice is wall-clock on the machine that translated.", "",
                  "| setting | sampler | steps | NFE / slice | time / slice (s) | Dice | PSNR (dB) | SSIM | n |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sampler["settings"]:
            lines.append(f"| {r['setting']} | {r['kind']} | {r['steps']} | {fmt(r['nfe_per_slice'], 0)} | "
                         f"{fmt(r['wall_s_per_slice'], 3)} | {_cell(r['dice'], 3, ci=False)} | "
                         f"{_cell(r['psnr'], 2, ci=False)} | {_cell(r['ssim'], 3, ci=False)} | {r['n']} |")
        lines.append("")
        lines += [smallest_nfe_sentence(sampler.get("smallest_nfe")), ""]
    lines += ["## SDEdit: t0 chosen on validation slices", ""]
    if t0.get("status") != "ok":
        lines += ["Not run (no validation sweep in `data/models/sdedit/train_info.json`).", ""]
    else:
        cols = t0["columns"]
        lines += [f"Chosen t0: {t0['chosen_t0']}" if t0.get("chosen_t0") is not None else "", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in t0["rows"]:
            lines.append("| " + " | ".join(plain(r.get(c)) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def plain(x) -> str:
    """A table cell for any value: floats to 4 significant digits, missing as a dash."""
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else "—"
    return "—" if x is None else str(x)


# ------------------------------------------------------------------------------------ command
def aggregate_outputs(params) -> list[str]:
    """Every file ``lmid aggregate`` writes for these params, relative to its ``--out-dir``.

    The workflow declares exactly these as the step's outputs."""
    modalities = experiment_modalities(params)
    main = next(iter(modalities))
    out = ["metrics.json", "summary.json", "tables/table.md", "tables/table.csv", "tables/table.tex"]
    out += [f"tables/table_{e}.{ext}" for e in modalities if e != main for ext in ("csv", "tex")]
    if any(is_unseen_experiment(e, params) for e in modalities):
        out.append("tables/protocol_shift.csv")
    if "lmidiffusion" in params.methods and params.evaluate.sampler_settings:
        out += ["tables/sampler.csv", "tables/sampler.tex"]
    if "sdedit" in params.methods:
        out.append("tables/sdedit_t0.csv")
    return out


def _group_scores(scores) -> dict[str, dict[str, Path]]:
    """``.../<experiment>/<method>.csv`` files → {experiment: {method: path}}, each file checked."""
    grouped: dict[str, dict[str, Path]] = {}
    for path in map(Path, scores):
        if not path.is_file():
            raise InputFileError(path, "per-slice metrics not found (run 'lmid evaluate' first)")
        if path.stem in grouped.setdefault(path.parent.name, {}):
            raise InputFileError(path, f"a second score file for {path.parent.name}/{path.stem}")
        grouped[path.parent.name][path.stem] = path
    return grouped


def aggregate(params, scores, out_dir: str | Path, infos=(), manifest: str | Path | None = None,
              sampler=()) -> dict:
    """Summarise per-slice score files (``<experiment>/<method>.csv``) into the tables and metrics.

    ``infos`` are ``<method>/train_info.json`` files, ``sampler`` the sampler table's
    ``<setting>.csv`` scores and ``manifest`` the slices' manifest.json; only these files are read.
    """
    out_dir = Path(out_dir)
    ev = params.evaluate
    seed = params.seed + BOOTSTRAP_SEED_OFFSET
    modalities = experiment_modalities(params)
    main = next(iter(modalities))
    grouped = _group_scores(scores)
    if main not in grouped:
        raise InputFileError(Path(main), f"no per-slice metrics of the main experiment {main!r} among the score "
                                         "files given (expected .../<experiment>/<method>.csv from 'lmid evaluate')")
    # Main first, then the params' extra sources, then anything else given.
    names = [e for e in modalities if e in grouped] + sorted(e for e in grouped if e not in modalities)
    where = sorted({str(Path(p).parent.parent) for p in scores})
    metrics_dir = where[0] if len(where) == 1 else ", ".join(where)

    summary: dict = {
        "main_experiment": main, "reference_method": ev.reference_method, "bootstrap": ev.bootstrap,
        "confidence": ev.confidence, "bootstrap_seed": seed, "paper": {m: {k: list(v) for k, v in d.items()}
                                                                      for m, d in PAPER.items()},
        "experiments": {},
    }
    md_parts = ["# Results", "",
                f"Generated by `lmid aggregate` from `{metrics_dir}`. Numbers are ours unless a row says 'paper'.", ""]
    tables_dir = out_dir / "tables"
    frames_by_exp = {}
    for exp in names:
        frames = frames_by_exp[exp] = {m: read_metrics_csv(path) for m, path in sorted(grouped[exp].items())}
        empty = [m for m, df in frames.items() if df.empty]
        if empty:
            raise InputFileError(grouped[exp][empty[0]], "holds no slices")
        source, target = modalities.get(exp, (exp, params.data.target_modality))
        s = summarise_experiment(frames, ev.reference_method, ev.bootstrap, ev.confidence, seed)
        methods = method_order(list(frames), params)
        with_paper = exp == main
        # The paper's four methods always have a column in the main table (ours "not run" if absent).
        columns = method_order(set(frames) | (set(PAPER) if with_paper else set()), params)
        s.update(source_modality=source, target_modality=target, method_order=methods, table_methods=columns,
                 column_titles={m: column_title(m, params) for m in columns})
        if ev.reference_method not in frames:
            log.warning("%s: reference method %s not evaluated; no Wilcoxon tests", exp, ev.reference_method)
        rows = table_rows(s, columns, with_paper, ev.reference_method)
        cap = caption(s, source, target, ev.confidence, ev.bootstrap, ev.reference_method, with_paper)
        s["caption"] = cap
        s["rows"] = [{"label": lab, "cells": cells, "kind": kind} for lab, cells, kind in rows]
        summary["experiments"][exp] = s
        first = f"{source} → {target}"
        unseen = is_unseen_experiment(exp, params)
        title = f"{first} (experiment `{exp}`)" + ("" if with_paper else ": unseen protocol, no retraining"
                                                    if unseen else ": zero-shot second source")
        md_parts.append(markdown_table(title, cap, rows, columns, params, first))
        if not with_paper:
            md_parts.append("The paper reports no numbers for this source.\n")
        stem = "table" if with_paper else f"table_{exp}"
        write_csv(tables_dir / f"{stem}.csv", tidy_rows(exp, s, columns, with_paper))
        write_text(tables_dir / f"{stem}.tex", latex_table(cap, rows, columns, params, first, f"tab:{exp}"))

    shift = summary["protocol_shift"] = protocol_shift(summary, frames_by_exp, params, ev.bootstrap, ev.confidence, seed)
    if shift.get("status") == "ok":
        md_parts.append(protocol_shift_markdown(shift, params))
        write_csv(tables_dir / "protocol_shift.csv", [
            {"experiment": exp, "unseen_experiment": e["unseen_experiment"], "method": m, "dice_main": r["main"],
             "dice_unseen": r["unseen"], "change": r["change"]["mean"], "change_ci_low": r["change"]["ci_low"],
             "change_ci_high": r["change"]["ci_high"], "pairs": r["pairs"]}
            for exp, e in shift["experiments"].items() for m, r in e["methods"].items()])
    sampler = summarise_sampler(sampler, ev.bootstrap, ev.confidence, seed, list(ev.sampler_settings))
    infos = read_train_infos(infos)
    t0 = sdedit_sweep(infos.get("sdedit"))
    summary["sampler"] = sampler
    summary["sdedit_t0"] = t0
    summary["timings"] = timings(summary, infos)
    summary["train_info"] = infos
    summary["data"] = data_facts(Path(manifest)) if manifest else {"status": "manifest not given"}
    md_parts.append(sampler_markdown(sampler, t0))
    if sampler.get("status") == "ok":
        write_csv(tables_dir / "sampler.csv", [
            {"setting": r["setting"], "kind": r["kind"], "steps": r["steps"], "n": r["n"],
             "nfe_per_slice": r["nfe_per_slice"], "wall_s_per_slice": r["wall_s_per_slice"],
             "dice_reference": r["dice_key"], **{f"{k}_{q}": r[k][q] for k in ("dice", "psnr", "ssim")
                                                 for q in ("mean", "std", "ci_low", "ci_high")}}
            for r in sampler["settings"]])
        write_text(tables_dir / "sampler.tex", sampler_latex(sampler))
    if t0.get("status") == "ok":
        write_csv(tables_dir / "sdedit_t0.csv", t0["rows"])
    write_text(tables_dir / "table.md", "\n".join(md_parts))

    metrics = {exp: {m: {k: e[k]["mean"] for k in ("dice", "dice_km", "psnr", "ssim", "psnr_mask", "ssim_mask")
                         if k in e} for m, e in s["methods"].items()}
               for exp, s in summary["experiments"].items()}
    if sampler.get("status") == "ok":
        metrics["sampler"] = {r["setting"]: {k: r[k]["mean"] for k in ("dice", "psnr", "ssim")}
                              for r in sampler["settings"]}
    write_json(out_dir / "metrics.json", clean(metrics))
    summary = clean(summary)
    write_json(out_dir / "summary.json", summary)
    return summary


def sampler_latex(sampler: dict) -> str:
    lines = ["% Generated by `lmid aggregate`; needs \\usepackage{booktabs}.", "\\begin{tabular}{lrrrrccc}",
             "\\toprule", "setting & steps & NFE & s/slice & Dice & PSNR (dB) & SSIM & n \\\\", "\\midrule"]
    for r in sampler["settings"]:
        lines.append(" & ".join(latex_escape(c) for c in (
            r["setting"], str(r["steps"]), fmt(r["nfe_per_slice"], 0), fmt(r["wall_s_per_slice"], 3),
            _cell(r["dice"], 3, ci=False), _cell(r["psnr"], 2, ci=False), _cell(r["ssim"], 3, ci=False),
            str(r["n"]))) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def data_facts(manifest_path: Path) -> dict:
    """The manifest's description of the data (no per-subject geometry), or a note that it is missing."""
    if not manifest_path.is_file():
        return {"status": "manifest not found"}
    manifest = read_json(manifest_path)
    keep = ("data_source", "modalities", "has_label", "counts", "splits", "n_skipped", "slice_size")
    return {k: manifest[k] for k in keep if isinstance(manifest, dict) and k in manifest}


def read_train_infos(paths) -> dict:
    """``<method>/train_info.json`` files → {method: info}; an unreadable file is warned about."""
    infos = {}
    for path in sorted(map(Path, paths)):
        try:
            info = read_json(path)
        except LmidError as err:
            log.warning("%s", err)
            continue
        if isinstance(info, dict):
            infos[path.parent.name] = info
    return infos


def timings(summary: dict, infos: dict) -> dict:
    """Per method: training wall time and the main experiment's translation time and NFE per slice."""
    main = summary["experiments"][summary["main_experiment"]]["methods"]
    out = {}
    for m in sorted(set(main) | set(infos)):
        info = infos.get(m, {})
        out[m] = {"train_wall_s": info.get("train_wall_s"),
                  "translate_wall_s_per_slice": main.get(m, {}).get("wall_s_per_slice"),
                  "nfe_per_slice": main.get(m, {}).get("nfe_per_slice"),
                  "device": info.get("device")}
    return out
