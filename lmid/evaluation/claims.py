"""The paper's claims, each answered on this run's data with a paired difference and a verdict.

The paper claims that LMIDiffusion beats CycleGAN, StyleGAN2-ADA and SDEdit on Dice, PSNR and SSIM
(PD → T1), and that it adapts to a new source modality (T2) and to a new acquisition protocol
without retraining. Each claim becomes one row:

- the measured difference, LMIDiffusion − other, per slice on the slices both scored (matched on
  the split index), its mean and a subject-level bootstrap interval (whole subjects resampled,
  :func:`lmid.evaluation.stats.bootstrap_ci`), and the paired Wilcoxon p over slices;
- the verdict: **supported** when the whole interval lies above 0, **contradicted** when it lies
  below 0, **not supported** when it contains 0 (no difference shown either way), **not tested**
  when a method or an experiment was not run.

"Adapts without retraining" is read as: on the new source or protocol, where no model was trained,
LMIDiffusion still beats the strongest competitor (by mean Dice there), since every method faces
that experiment with the same models. Its own Dice change from the training protocol is shown
beside it (``detail``), from :func:`lmid.evaluation.table_stats.protocol_shift`.

One question the paper does not ask is answered beside its claims when the run has a segmentation
reference (``synthseg``): is translation needed at all? Per experiment (PD → T1, T2 → T1 and their
unseen-protocol twins), the Dice of LMIDiffusion (translate, then K-Means) against that of a
contrast-agnostic segmenter that segments the source directly, with the same difference, interval,
p and verdict ("supported": translating beats segmenting the source directly).
"""

from __future__ import annotations

import numpy as np

from lmid.evaluation.stats import bootstrap_ci, wilcoxon_p
from lmid.evaluation.table_stats import SUMMARY_COLUMNS

#: The competitors the paper's table ranks LMIDiffusion against (registry names).
CLAIM_COMPETITORS = ("cyclegan", "stylegan2", "sdedit")
#: Metric key in a summary → the per-slice column's display name.
CLAIM_METRICS = (("dice", "Dice"), ("psnr", "PSNR"), ("ssim", "SSIM"))
VERDICTS = ("supported", "not supported", "contradicted", "not tested")
#: The claim of the rows against a segmentation reference (not the paper's).
TRANSLATION_NEEDED = "translation beats contrast-agnostic segmentation of the source on Dice"


def segmentation_references() -> tuple[str, ...]:
    """Registry names of the methods that segment the source instead of translating it."""
    from lmid.registry import METHODS

    return tuple(name for name, s in METHODS.items() if s.segments)


def verdict(ci_low: float, ci_high: float) -> str:
    """From the interval of LMIDiffusion − other (higher is better for every metric here)."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "not tested"
    if ci_low > 0:
        return "supported"
    if ci_high < 0:
        return "contradicted"
    return "not supported"


def paired_difference(ref_df, other_df, column: str, n_boot: int, confidence: float, seed: int) -> dict | None:
    """Mean, subject-level CI and Wilcoxon p of ``ref − other`` on ``column`` (None if unpaired)."""
    if column not in ref_df.columns or column not in other_df.columns:
        return None
    pairs = ref_df[["index", "subject", column]].merge(other_df[["index", column]], on="index", suffixes=("", "_other"))
    a = pairs[column].to_numpy(dtype=float)
    b = pairs[f"{column}_other"].to_numpy(dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return None
    d = a[ok] - b[ok]
    lo, hi = bootstrap_ci(d, n_boot, confidence, seed, groups=pairs["subject"].astype(str).to_numpy()[ok])
    return {
        "mean": float(d.mean()),
        "ci_low": lo,
        "ci_high": hi,
        "p": wilcoxon_p(a[ok], b[ok]),
        "pairs": int(ok.sum()),
        "subjects": int(len(set(pairs["subject"].astype(str)[ok]))),
    }


def _column(summary_exp: dict, metric: str) -> str:
    return SUMMARY_COLUMNS[summary_exp["dice_key"]] if metric == "dice" else SUMMARY_COLUMNS[metric]


def _row(claim: str, experiment: str, metric: str, other: str | None, diff: dict | None, detail: str = "") -> dict:
    row = {"claim": claim, "experiment": experiment, "metric": metric, "other": other, "detail": detail}
    if diff is None:
        row.update(difference=None, ci_low=None, ci_high=None, p=None, pairs=0, subjects=0, verdict="not tested")
    else:
        row.update(
            difference=diff["mean"],
            ci_low=diff["ci_low"],
            ci_high=diff["ci_high"],
            p=diff["p"],
            pairs=diff["pairs"],
            subjects=diff["subjects"],
            verdict=verdict(diff["ci_low"], diff["ci_high"]),
        )
    return row


def _strongest(summary_exp: dict, frames: dict, reference: str) -> str | None:
    cands = [
        (summary_exp["methods"][m]["dice"]["mean"], m)
        for m in CLAIM_COMPETITORS
        if m in frames and m != reference and np.isfinite(summary_exp["methods"][m]["dice"].get("mean", np.nan))
    ]
    return max(cands)[1] if cands else None


def paper_claims(summary: dict, frames_by_exp: dict, params, n_boot: int, confidence: float, seed: int) -> dict:
    """``{"reference": ..., "rows": [...]}``: one row per claim (see the module docstring)."""
    from lmid.experiments import is_unseen_experiment
    from lmid.registry import METHODS

    ref = summary["reference_method"]
    main = summary["main_experiment"]
    exps = summary["experiments"]
    rows = []
    frames = frames_by_exp.get(main, {})
    for other in CLAIM_COMPETITORS:
        for metric, label in CLAIM_METRICS:
            claim = f"beats {METHODS[other].display} on {label}"
            diff = None
            if ref in frames and other in frames:
                diff = paired_difference(
                    frames[ref], frames[other], _column(exps[main], metric), n_boot, confidence, seed
                )
            rows.append(_row(claim, main, metric, other, diff))

    shift = summary.get("protocol_shift", {})
    for exp in exps:
        if exp == main:
            continue
        unseen = is_unseen_experiment(exp, params)
        source = exps[exp].get("source_modality", exp)
        what = (
            f"a new protocol ({source} → {exps[exp].get('target_modality', '')})"
            if unseen
            else f"a new source ({source})"
        )
        fr = frames_by_exp.get(exp, {})
        strongest = _strongest(exps[exp], fr, ref) if ref in fr else None
        diff = (
            None
            if strongest is None
            else paired_difference(fr[ref], fr[strongest], _column(exps[exp], "dice"), n_boot, confidence, seed)
        )
        detail = ""
        for base, e in (shift.get("experiments") or {}).items():
            if e.get("unseen_experiment") == exp and ref in e.get("methods", {}):
                ch = e["methods"][ref]["change"]
                detail = (
                    f"LMIDiffusion's Dice change from the training protocol ({base}): {ch['mean']:+.2f} "
                    f"[{ch['ci_low']:+.2f}, {ch['ci_high']:+.2f}]"
                )
        rows.append(
            _row(
                f"adapts to {what} without retraining: beats the strongest competitor on Dice",
                exp,
                "dice",
                strongest,
                diff,
                detail,
            )
        )
    # Is translation needed at all? LMIDiffusion against each segmentation reference of the run, on
    # every experiment (each is scored on its own test slices; no model is retrained).
    for seg in segmentation_references():
        if seg == ref or not (seg in params.methods or any(seg in fr for fr in frames_by_exp.values())):
            continue
        for exp in exps:
            fr = frames_by_exp.get(exp, {})
            diff = None
            if ref in fr and seg in fr:
                diff = paired_difference(fr[ref], fr[seg], _column(exps[exp], "dice"), n_boot, confidence, seed)
            rows.append(_row(TRANSLATION_NEEDED, exp, "dice", seg, diff, "not a claim of the paper"))
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    return {"reference": ref, "confidence": confidence, "bootstrap": n_boot, "rows": rows, "counts": counts}


def claims_markdown(claims: dict, display) -> str:
    """The claims table in Markdown; ``display(method) -> column title``."""
    if not claims.get("rows"):
        return ""
    pct = round(100 * claims["confidence"])
    lines = [
        "## The paper's claims on this data",
        "",
        f"Difference = LMIDiffusion − other, per slice on the same test slices, mean [{pct} % subject-level "
        f"bootstrap CI, {claims['bootstrap']} resamples]; p: two-sided paired Wilcoxon over slices. Verdict: "
        "supported when the interval lies above 0, contradicted when below, not supported when it contains 0.",
        "",
        "| Claim | Experiment | vs | Difference [CI] | p | Verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in claims["rows"]:
        if r["difference"] is None:
            diff, p = "—", "—"
        else:
            diff = f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
            p = "< 0.001" if r["p"] < 0.001 else f"{r['p']:.3f}"
        other = display(r["other"]) if r["other"] else "—"
        claim = r["claim"] + (f" ({r['detail']})" if r["detail"] else "")
        lines.append(f"| {claim} | `{r['experiment']}` | {other} | {diff} | {p} | **{r['verdict']}** |")
    c = claims["counts"]
    lines += [
        "",
        f"{c['supported']} supported, {c['not supported']} not supported, {c['contradicted']} contradicted, "
        f"{c['not tested']} not tested.",
        "",
    ]
    note = translation_needed_note(claims, display)
    if note:
        lines += [note, ""]
    return "\n".join(lines)


def translation_needed_note(claims: dict, display) -> str:
    """What the rows against a segmentation reference ask ("" when the run has none)."""
    others = sorted({r["other"] for r in claims.get("rows", []) if r["claim"] == TRANSLATION_NEEDED and r["other"]})
    if not others:
        return ""
    names = " and ".join(display(m) for m in others)
    return (
        f"The rows '{TRANSLATION_NEEDED}' are not the paper's: they ask whether translating at all is needed. "
        f"{names} is a segmenter trained on images synthesised with random contrast from the K-Means labels of the "
        "target training slices; it segments each source slice directly. Supported: LMIDiffusion's translation, "
        "segmented by K-Means, scores a higher Dice than segmenting the source directly."
    )


def claims_csv_rows(claims: dict) -> list[dict]:
    keys = (
        "claim",
        "experiment",
        "metric",
        "other",
        "difference",
        "ci_low",
        "ci_high",
        "p",
        "pairs",
        "subjects",
        "verdict",
        "detail",
    )
    return [{k: r[k] for k in keys} for r in claims.get("rows", [])]
