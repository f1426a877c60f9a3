"""``lmid aggregate``: per-slice metrics → the paper's table, DVC metrics and a summary.

Inputs, each file named on the command line (nothing else is read):

* ``--scores .../<experiment>/<method>.csv`` written by ``lmid evaluate``; experiment ``pd2t1``
  is the main one (``data.source_modality`` → ``data.target_modality``), others (``t22t1``,
  ``pd2t1_3t``) are zero-shot extra sources and the unseen protocol (lmid/experiments.py).
* ``--sampler .../<setting>.csv`` (optional; :data:`lmid.config.SAMPLER_SETTING`): LMIDiffusion at other sampler
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

The work is split by concern: lmid/evaluation/table_stats.py computes the statistics,
lmid/evaluation/tables.py renders them (Markdown, LaTeX, CSV), lmid/evaluation/display.py names
and orders the columns. This module reads the inputs, calls them and writes the files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmid.config import parse_sampler_setting, sampler_setting
from lmid.evaluation.claims import claims_csv_rows, claims_markdown, paper_claims
from lmid.errors import InputFileError, LmidError
from lmid.evaluation.display import PAPER, column_title, method_order
from lmid.evaluation.metrics import read_metrics_csv
from lmid.evaluation.table_stats import (
    dvc_metrics,
    protocol_shift,
    sdedit_sweep,
    summarise_experiment,
    summarise_sampler,
    timings,
)
from lmid.evaluation.tables import (
    caption,
    clean,
    experiment_title,
    latex_table,
    markdown_table,
    protocol_shift_markdown,
    protocol_shift_rows,
    sampler_latex,
    sampler_markdown,
    sampler_rows,
    table_rows,
    tidy_rows,
    write_csv,
)
from lmid.io import read_json, write_json, write_text
from lmid.experiments import experiment_modalities, is_unseen_experiment

log = logging.getLogger(__name__)

#: Offset added to params.seed for the bootstrap generator.
BOOTSTRAP_SEED_OFFSET = 907


# ----------------------------------------------------------------------------------------- inputs
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


def data_facts(manifest_path: Path) -> dict:
    """The manifest's description of the data (no per-subject geometry), or a note that it is missing."""
    if not manifest_path.is_file():
        return {"status": "manifest not found"}
    manifest = read_json(manifest_path)
    keep = ("data_source", "modalities", "has_label", "counts", "splits", "n_skipped", "slice_size")
    return {k: manifest[k] for k in keep if isinstance(manifest, dict) and k in manifest}


# ---------------------------------------------------------------------------------------- command
def aggregate_outputs(params) -> list[str]:
    """Every file ``lmid aggregate`` writes for these params, relative to its ``--out-dir``.

    The workflow declares exactly these as the step's outputs."""
    modalities = experiment_modalities(params)
    main = next(iter(modalities))
    out = [
        "metrics.json",
        "summary.json",
        "tables/table.md",
        "tables/table.csv",
        "tables/table.tex",
        "tables/claims.csv",
    ]
    out += [f"tables/table_{e}.{ext}" for e in modalities if e != main for ext in ("csv", "tex")]
    if any(is_unseen_experiment(e, params) for e in modalities):
        out.append("tables/protocol_shift.csv")
    if "lmidiffusion" in params.methods and params.evaluate.sampler_settings:
        out += ["tables/sampler.csv", "tables/sampler.tex"]
    if "sdedit" in params.methods:
        out.append("tables/sdedit_t0.csv")
    return out


def aggregate(params, scores, out_dir: str | Path, infos=(), manifest: str | Path | None = None, sampler=()) -> dict:
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
        raise InputFileError(
            Path(main),
            f"no per-slice metrics of the main experiment {main!r} among the score "
            "files given (expected .../<experiment>/<method>.csv from 'lmid evaluate')",
        )
    # Main first, then the params' extra sources, then anything else given.
    names = [e for e in modalities if e in grouped] + sorted(e for e in grouped if e not in modalities)
    where = sorted({str(Path(p).parent.parent) for p in scores})
    metrics_dir = where[0] if len(where) == 1 else ", ".join(where)

    summary: dict = {
        "main_experiment": main,
        "reference_method": ev.reference_method,
        "bootstrap": ev.bootstrap,
        "confidence": ev.confidence,
        "bootstrap_seed": seed,
        "paper": {m: {k: list(v) for k, v in d.items()} for m, d in PAPER.items()},
        "experiments": {},
    }
    md_parts = [
        "# Results",
        "",
        f"Generated by `lmid aggregate` from `{metrics_dir}`. Numbers are ours unless a row says 'paper'.",
        "",
    ]
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
        s.update(
            source_modality=source,
            target_modality=target,
            method_order=methods,
            table_methods=columns,
            column_titles={m: column_title(m, params) for m in columns},
        )
        if ev.reference_method not in frames:
            log.warning("%s: reference method %s not evaluated; no Wilcoxon tests", exp, ev.reference_method)
        rows = table_rows(s, columns, with_paper, ev.reference_method)
        cap = caption(s, source, target, ev.confidence, ev.bootstrap, ev.reference_method, with_paper)
        s["caption"] = cap
        s["rows"] = [{"label": r.title, "cells": [c.markdown() for c in r.cells], "kind": r.kind} for r in rows]
        summary["experiments"][exp] = s
        first = f"{source} → {target}"
        title = experiment_title(exp, first, with_paper, is_unseen_experiment(exp, params))
        md_parts.append(markdown_table(title, cap, rows, columns, params, first))
        if not with_paper:
            md_parts.append("The paper reports no numbers for this source.\n")
        stem = "table" if with_paper else f"table_{exp}"
        write_csv(tables_dir / f"{stem}.csv", tidy_rows(exp, rows, columns))
        write_text(tables_dir / f"{stem}.tex", latex_table(cap, rows, columns, params, first, f"tab:{exp}"))

    shift = summary["protocol_shift"] = protocol_shift(
        summary, frames_by_exp, params, ev.bootstrap, ev.confidence, seed
    )
    if shift.get("status") == "ok":
        md_parts.append(protocol_shift_markdown(shift, params))
        write_csv(tables_dir / "protocol_shift.csv", protocol_shift_rows(shift))
    claims = summary["claims"] = paper_claims(summary, frames_by_exp, params, ev.bootstrap, ev.confidence, seed)
    # The claims lead the Markdown results, right under its heading.
    md_parts[4:4] = [claims_markdown(claims, lambda m: column_title(m, params))]
    write_csv(tables_dir / "claims.csv", claims_csv_rows(claims))
    sampler = summarise_sampler(sampler, ev.bootstrap, ev.confidence, seed, list(ev.sampler_settings))
    if sampler.get("smallest_nfe"):
        # Is the sampler the test set was translated with the sweep's choice (or inside its interval)?
        test = sampler_setting(params.lmidiffusion.sampler)

        def same(name: str) -> tuple:  # ddim-25 and ddim-25-uniform name one sampler
            return tuple(sorted(parse_sampler_setting(name).items()))

        rows = {same(r["setting"]): r for r in sampler["settings"]}
        row = rows.get(same(test))
        pick = sampler["smallest_nfe"]
        sampler["test_sampler"] = {
            "setting": test,
            "in_sweep": row is not None,
            "is_best": row is not None and row["setting"] == pick["best"],
            "inside_best_ci": row is not None and row["dice"]["mean"] >= pick["ci_low"],
        }
    infos = read_train_infos(infos)
    t0 = sdedit_sweep(infos.get("sdedit"))
    summary["sampler"] = sampler
    summary["sdedit_t0"] = t0
    summary["timings"] = timings(summary, infos)
    summary["train_info"] = infos
    summary["data"] = data_facts(Path(manifest)) if manifest else {"status": "manifest not given"}
    md_parts.append(sampler_markdown(sampler, t0))
    if sampler.get("status") == "ok":
        write_csv(tables_dir / "sampler.csv", sampler_rows(sampler))
        write_text(tables_dir / "sampler.tex", sampler_latex(sampler))
    if t0.get("status") == "ok":
        write_csv(tables_dir / "sdedit_t0.csv", t0["rows"])
    write_text(tables_dir / "table.md", "\n".join(md_parts))

    write_json(out_dir / "metrics.json", clean(dvc_metrics(summary)))
    summary = clean(summary)
    write_json(out_dir / "summary.json", summary)
    return summary
