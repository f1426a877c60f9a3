"""How ``lmid aggregate`` writes its tables: Markdown, LaTeX and CSV from the summary's statistics.

Cell formatters (``fmt``, ``fmt_p``, ``plain``), each experiment's rows as data (:func:`table_rows`:
labels, cells, which rows show an interval) and their Markdown, LaTeX and tidy-CSV renderings (the
HTML report draws the same rows, lmid/report/tables.py), the caption, the unseen-protocol and
sampler sections, and the writers of ``tables/*``. The numbers come from
lmid/evaluation/table_stats.py; nothing here computes a statistic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmid.evaluation.display import DISPLAY, PAPER, PAPER_LABEL, PAPER_SLICES, ROWS, column_title, method_order
from lmid.evaluation.table_stats import best_method, method_stats
from lmid.io import write_text


# ------------------------------------------------------------------------------- cells and values
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


def plain(x) -> str:
    """A table cell for any value: floats to 4 significant digits, missing as a dash."""
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else "—"
    return "—" if x is None else str(x)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


#: Cell texts that stand for a missing number.
DASH, NOT_RUN = "—", "not run"


@dataclass(frozen=True)
class Cell:
    """One cell of a results table: a statistic (mean ± std [CI]) or, when ``text`` is set, that text.

    ``n`` and ``p`` are not shown in the cell; the tidy CSV carries them.
    """

    text: str | None = None
    mean: float | None = None
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    decimals: int = 2
    bold: bool = False
    show_ci: bool = True
    n: int | None = None
    p: float | None = None

    @property
    def is_stat(self) -> bool:
        return self.text is None

    @property
    def missing(self) -> bool:
        return self.text in (DASH, NOT_RUN)

    def value(self) -> str:
        if self.text is not None:
            return self.text
        return f"{fmt(self.mean, self.decimals)} ± {fmt(self.std, self.decimals)}"

    def interval(self) -> str | None:
        if self.text is not None or not self.show_ci or not _finite(self.ci_low):
            return None
        return f"[{fmt(self.ci_low, self.decimals)}, {fmt(self.ci_high, self.decimals)}]"

    def markdown(self) -> str:
        text = f"**{self.value()}**" if self.bold else self.value()
        ci = self.interval()
        return f"{text} {ci}" if ci else text

    def latex(self) -> str:
        return latex_escape(self.markdown())


def stat(st: dict | None, decimals: int = 2, bold: bool = False, ci: bool = True) -> Cell:
    """The cell of one summary entry: "not run" without the method, a dash without a value."""
    if st is None:
        return Cell(NOT_RUN)
    if not _finite(st.get("mean")):
        return Cell(DASH)
    return Cell(
        mean=st["mean"],
        std=st.get("std"),
        ci_low=st.get("ci_low"),
        ci_high=st.get("ci_high"),
        decimals=decimals,
        bold=bold,
        show_ci=ci,
        n=st.get("n"),
        p=st.get("p_vs_reference"),
    )


@dataclass(frozen=True)
class Row:
    """One row of an experiment's table, one cell per method column."""

    label: str
    kind: str  # ours / paper / p / n
    cells: tuple[Cell, ...]
    key: str | None = None  # the summary's metric behind the row
    tag: str | None = None  # whose numbers, when not ours
    secondary: bool = False  # a row beside the headline scores (muted in the HTML report)
    dice_reference: str = ""  # what a "dice" row was scored against

    @property
    def title(self) -> str:
        return f"{self.label} — {self.tag}" if self.tag else self.label


# ------------------------------------------------------------------------------ experiment tables
def table_rows(summary: dict, methods: list[str], with_paper: bool, reference: str) -> list[Row]:
    """One experiment's table as data; every rendering (Markdown, LaTeX, CSV, HTML) draws these rows."""
    target = summary.get("target_modality") or "target"
    headline_keys = {key for key, _, _ in ROWS}  # the paper's scores: the best competitor in bold
    rows: list[Row] = []

    def ours(key: str, label: str, decimals: int = 2, *, ci: bool = True, headline: bool = False) -> None:
        best = best_method(summary, key, methods) if key in headline_keys else None
        cells = tuple(stat(method_stats(summary, m, key), decimals, bold=m == best, ci=ci) for m in methods)
        ref = summary["dice_reference"] if key == "dice" else ""
        rows.append(Row(label, "ours", cells, key, secondary=not headline, dice_reference=ref))

    def paper(key: str, label: str) -> None:
        if with_paper:
            cells = tuple(
                Cell(mean=PAPER[m][key][0], std=PAPER[m][key][1], n=PAPER_SLICES) if m in PAPER else Cell(DASH)
                for m in methods
            )
            ref = "ground truth" if key == "dice" else ""
            rows.append(Row(label, "paper", cells, key, tag=PAPER_LABEL, dice_reference=ref))

    for key, label, dec in ROWS:
        ours(key, label, dec, headline=True)
        if key == "dice" and summary["dice_key"] == "dice_gt":
            # IXI has no tissue labels, so the paper's Dice is most plausibly against K-Means of the
            # real target: its row stands beside ours of that kind.
            ours("dice_km", f"Dice vs K-Means of real {target}", headline=True)
            paper("dice", label)
            # The same segmentation of the real slices in every column: an interval adds nothing.
            ours("dice_ceiling", f"Dice ceiling: K-Means on the real {target}", ci=False)
        else:
            paper(key, label)
    ours("contrast_wm_gm", "Tissue contrast WM−GM (× real)")
    ours("contrast_gm_csf", "Tissue contrast GM−CSF (× real)")
    ours("tissue_order", "WM > GM > CSF (fraction of slices)", ci=False)
    ours("psnr_mask", "PSNR in brain (dB)")
    ours("ssim_mask", "SSIM in brain")
    ref_name = DISPLAY.get(reference, reference)
    for key, label, _ in ROWS:
        cells = []
        for m in methods:
            st = method_stats(summary, m, key)
            if m == reference:
                cells.append(Cell("ref."))
            elif st is None:
                cells.append(Cell(DASH))
            else:
                cells.append(Cell(fmt_p(st.get("p_vs_reference"))))
        rows.append(Row(f"p {label.split()[0]} (Wilcoxon vs {ref_name})", "p", tuple(cells), key))
    scored = summary["methods"]
    subjects = tuple(Cell(str(scored[m].get("n_subjects") or DASH) if m in scored else "0") for m in methods)
    rows.append(Row("subjects (n)", "n", subjects))
    rows.append(Row("slices (n)", "n", tuple(Cell(str(scored[m]["n"]) if m in scored else "0") for m in methods)))
    return rows


def caption(
    summary: dict, source: str, target: str, confidence: float, n_boot: int, reference: str, with_paper: bool
) -> str:
    dice = (
        "Dice against the ground-truth labels"
        if summary["dice_key"] == "dice_gt"
        else f"Dice against K-Means of the real {target} slice (no ground-truth labels)"
    )
    text = (
        f"{source} → {target}. {dice}: per slice the unweighted mean over CSF, GM and WM, then mean ± std over "
        f"test slices, [{100 * confidence:g} % percentile bootstrap CI of the mean, {n_boot} resamples of whole "
        f"subjects, since slices of one subject are not independent]. PSNR/SSIM "
        f"against the real {target} slice on [0, 1] (data range 1), whole slice; 'in brain' rows use the brain "
        f"mask only. p: two-sided paired Wilcoxon signed-rank test over slices against "
        f"{DISPLAY.get(reference, reference)}. "
        f"Bold: best of the paper's four methods."
    )
    text += segmentation_reference_note(list(summary["methods"]))
    n_subjects = [e.get("n_subjects") for e in summary["methods"].values() if e.get("n_subjects")]
    if n_subjects and min(n_subjects) < 10:
        text += (
            f" Only {min(n_subjects)} test subjects: an interval from resampling so few subjects is rough "
            "(with 2 it can collapse onto the subject means)."
        )
    if with_paper:
        text += (
            " Rows marked 'paper' are the published numbers on IXI (300 training / 75 test slices), "
            "not computed on our data: compare trends, not values."
        )
    return text


def segmentation_reference_note(methods) -> str:
    """The caption's sentence on segmentation references among ``methods`` ("" when there is none)."""
    from lmid.registry import METHODS

    names = [DISPLAY.get(m, m) for m in methods if m in METHODS and METHODS[m].segments]
    if not names:
        return ""
    return (
        f" {' and '.join(names)} segments the source slice itself and translates nothing: its Dice scores its own "
        "labels inside the test slice's brain mask (where K-Means segments a translation), and PSNR, SSIM and "
        "the tissue contrasts, which score a translated image, do not apply (—)."
    )


def experiment_title(exp: str, first: str, with_paper: bool, unseen: bool) -> str:
    """The heading of one experiment's Markdown table (``first``: "source → target")."""
    return f"{first} (experiment `{exp}`)" + (
        "" if with_paper else ": unseen protocol, no retraining" if unseen else ": zero-shot second source"
    )


def markdown_table(title: str, cap: str, rows: list[Row], methods: list[str], params, first: str) -> str:
    head = "| " + " | ".join([first] + [column_title(m, params) for m in methods]) + " |"
    sep = "|" + "---|" * (len(methods) + 1)
    body = ["| " + " | ".join([r.title] + [c.markdown() for c in r.cells]) + " |" for r in rows]
    return "\n".join([f"## {title}", "", cap, "", head, sep, *body, ""])


def latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("→", r"$\rightarrow$"),
        ("±", r"$\pm$"),
        ("—", "--"),
        ("<", r"$<$"),
    ):
        text = text.replace(a, b)
    return re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", text)


def latex_table(cap: str, rows: list[Row], methods: list[str], params, first: str, label: str) -> str:
    cols = "l" + "c" * len(methods)
    lines = [
        "% Generated by `lmid aggregate`; needs \\usepackage{booktabs}.",
        "\\begin{table}[t]",
        "\\centering",
        "\\scriptsize",
        f"\\caption{{{latex_escape(cap)}}}",
        f"\\label{{{label}}}",
        f"\\begin{{tabular}}{{{cols}}}",
        "\\toprule",
        " & ".join(latex_escape(c) for c in [first] + [column_title(m, params) for m in methods]) + " \\\\",
        "\\midrule",
    ]
    prev = None
    for r in rows:
        if prev is not None and r.kind != prev and r.kind in ("p", "n"):
            lines.append("\\midrule")
        lines.append(" & ".join([latex_escape(r.title)] + [c.latex() for c in r.cells]) + " \\\\")
        prev = r.kind
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def tidy_rows(experiment: str, rows: list[Row], methods: list[str]) -> list[dict]:
    """``tables/table*.csv``: per method, one record per scored row of the table, ours then the paper's."""
    out = []
    for j, m in enumerate(methods):
        for kind in ("ours", "paper"):
            for r in rows:
                c = r.cells[j]
                if r.kind != kind or not c.is_stat:
                    continue
                out.append(
                    {
                        "experiment": experiment,
                        "source": "ours" if kind == "ours" else r.tag,
                        "method": m,
                        "metric": r.key,
                        "dice_reference": r.dice_reference,
                        "n": c.n,
                        "mean": c.mean,
                        "std": c.std,
                        "ci_low": c.ci_low,
                        "ci_high": c.ci_high,
                        "p_vs_reference": c.p,
                    }
                )
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    write_text(path, pd.DataFrame(clean(rows)).to_csv(index=False, float_format="%.6g", na_rep=""))


# -------------------------------------------------------------------------------- unseen protocol
def protocol_description(params) -> str:
    """One sentence on the unseen protocol, for the Markdown table and the HTML report."""
    u = params.unseen_protocol
    seqs = ", ".join(f"{m} TR {q.tr_ms:g} / TE {q.te_ms:g} ms" for m, q in u.sequences.items())
    snr = u.snr if u.snr is not None else params.simulate.snr
    return (
        f"The test subjects simulated again on a protocol no model was trained on ({seqs}; tissue T1/T2 of "
        f"another field strength; SNR {snr:g}), translated by the models trained on the main protocol as they "
        "are. Change = unseen − main, paired over the same slices, [subject-level bootstrap CI]."
    )


def protocol_shift_markdown(shift: dict, params) -> str:
    if shift.get("status") != "ok":
        return ""
    lines = [
        f"## Unseen protocol `{params.unseen_protocol.name}`: Dice without retraining",
        "",
        protocol_description(params),
        "",
    ]
    for exp, e in shift["experiments"].items():
        methods = method_order(list(e["methods"]), params)
        lines += [
            f"### `{exp}` → `{e['unseen_experiment']}`",
            "",
            "| Dice | " + " | ".join(column_title(m, params) for m in methods) + " |",
            "|---|" + "---|" * len(methods),
        ]
        lines.append("| main protocol | " + " | ".join(fmt(e["methods"][m]["main"]) for m in methods) + " |")
        lines.append("| unseen protocol | " + " | ".join(fmt(e["methods"][m]["unseen"]) for m in methods) + " |")
        lines.append(
            "| change | "
            + " | ".join(
                f"{e['methods'][m]['change']['mean']:+.2f} [{e['methods'][m]['change']['ci_low']:+.2f}, "
                f"{e['methods'][m]['change']['ci_high']:+.2f}]"
                for m in methods
            )
            + " |"
        )
        lines.append("")
    return "\n".join(lines)


def protocol_shift_rows(shift: dict) -> list[dict]:
    """``tables/protocol_shift.csv``: one row per experiment and method."""
    return [
        {
            "experiment": exp,
            "unseen_experiment": e["unseen_experiment"],
            "method": m,
            "dice_main": r["main"],
            "dice_unseen": r["unseen"],
            "change": r["change"]["mean"],
            "change_ci_low": r["change"]["ci_low"],
            "change_ci_high": r["change"]["ci_high"],
            "pairs": r["pairs"],
        }
        for exp, e in shift["experiments"].items()
        for m, r in e["methods"].items()
    ]


# -------------------------------------------------------------------------- sampler and SDEdit t0
def smallest_nfe_sentence(entry: dict | None, test: dict | None = None) -> str:
    if not entry:
        return ""
    text = (
        f"Best mean Dice: {entry['best']} ({fmt(entry['best_mean'], 3)}, CI from {fmt(entry['ci_low'], 3)}). "
        f"Fewest network evaluations with a mean inside that interval: {entry['setting']} "
        f"({fmt(entry['nfe_per_slice'], 0)} per slice, Dice {fmt(entry['mean'], 3)})."
    )
    if test:
        if not test["in_sweep"]:
            verdict = "was not in this sweep: it is a guess, not the sweep's choice"
        elif test["is_best"]:
            verdict = "is the sweep's best"
        elif test["inside_best_ci"]:
            verdict = "lies inside the best setting's interval"
        else:
            verdict = "lies below the best setting's interval: choose the test sampler again"
        text += f" The test set was translated with {test['setting']}, which {verdict}."
    return text


def sampler_markdown(sampler: dict, t0: dict) -> str:
    lines = ["## LMIDiffusion sampler settings", ""]
    if sampler.get("status") != "ok":
        lines += ["Not run (no `data/metrics/sampler/*.csv`).", ""]
    else:
        lines += [
            "LMIDiffusion with several samplers on the same validation slices (one sample each). "
            "Time per slice is wall-clock on the machine that translated.",
            "",
            "| setting | sampler | steps | NFE / slice | time / slice (s) | Dice | PSNR (dB) | SSIM | n |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sampler["settings"]:
            lines.append(
                f"| {r['setting']} | {r['kind']} | {r['steps']} | {fmt(r['nfe_per_slice'], 0)} | "
                f"{fmt(r['wall_s_per_slice'], 3)} | {stat(r['dice'], 3, ci=False).markdown()} | "
                f"{stat(r['psnr'], 2, ci=False).markdown()} | {stat(r['ssim'], 3, ci=False).markdown()} | {r['n']} |"
            )
        lines.append("")
        lines += [smallest_nfe_sentence(sampler.get("smallest_nfe"), sampler.get("test_sampler")), ""]
    lines += ["## SDEdit: t0 chosen on validation slices", ""]
    if t0.get("status") != "ok":
        lines += ["Not run (no validation sweep in `data/models/sdedit/train_info.json`).", ""]
    else:
        cols = t0["columns"]
        lines += [
            f"Chosen t0: {t0['chosen_t0']}" if t0.get("chosen_t0") is not None else "",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
        ]
        for r in t0["rows"]:
            lines.append("| " + " | ".join(plain(r.get(c)) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def sampler_latex(sampler: dict) -> str:
    lines = [
        "% Generated by `lmid aggregate`; needs \\usepackage{booktabs}.",
        "\\begin{tabular}{lrrrrccc}",
        "\\toprule",
        "setting & steps & NFE & s/slice & Dice & PSNR (dB) & SSIM & n \\\\",
        "\\midrule",
    ]
    for r in sampler["settings"]:
        text = (r["setting"], str(r["steps"]), fmt(r["nfe_per_slice"], 0), fmt(r["wall_s_per_slice"], 3))
        scores = (stat(r[k], d, ci=False).latex() for k, d in (("dice", 3), ("psnr", 2), ("ssim", 3)))
        lines.append(" & ".join([*(latex_escape(c) for c in text), *scores, str(r["n"])]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def sampler_rows(sampler: dict) -> list[dict]:
    """``tables/sampler.csv``: one row per sampler setting, mean/std/CI of each metric."""
    return [
        {
            "setting": r["setting"],
            "kind": r["kind"],
            "steps": r["steps"],
            "n": r["n"],
            "nfe_per_slice": r["nfe_per_slice"],
            "wall_s_per_slice": r["wall_s_per_slice"],
            "dice_reference": r["dice_key"],
            **{f"{k}_{q}": r[k][q] for k in ("dice", "psnr", "ssim") for q in ("mean", "std", "ci_low", "ci_high")},
        }
        for r in sampler["settings"]
    ]
