"""``lmid report``: the figures and one self-contained HTML page.

The page embeds its PNG figures as base64 ``data:`` URIs and its CSS inline; it references
nothing outside itself (no fonts, scripts or links), so it can be mailed or opened offline. Apart
from the generation timestamp the same inputs give the same file.

Inputs: ``<reports-dir>/summary.json`` (from ``lmid aggregate``, required), the test split and
manifest, every method's translations, per-slice metrics, ``train_log.csv`` and
``train_info.json``, and the K-Means segmenter. Anything optional that is missing becomes a
"not run" note instead of an error.

This module only renders: :mod:`.inputs` reads the files, :mod:`.draw` makes the figures (data in
:mod:`.figdata`, captions in :mod:`.captions`), :mod:`.tables` turns the numbers into table rows,
and ``templates/`` holds the page (Jinja2, autoescaped) and its CSS.
"""

from __future__ import annotations

import base64
import datetime as _dt
from functools import lru_cache
from pathlib import Path

import jinja2

from lmid.evaluation.display import PAPER_LABEL
from lmid.experiments import is_unseen_experiment
from lmid.io import write_text
from lmid.report import environment, tables
from lmid.report.draw import draw_figures
from lmid.report.inputs import load_inputs
from lmid.report.tables import protocol_items

#: The templates ship inside the package, next to this file.
TEMPLATES = Path(__file__).resolve().parent / "templates"

#: Page navigation: (section id, link text), in page order.
NAV = (
    ("claims", "Claims"),
    ("results", "Main table"),
    ("second-source", "Second source"),
    ("unseen-protocol", "Unseen protocol"),
    ("sampler", "Sampling"),
    ("diagnostics", "Diagnostics"),
    ("baselines", "Baselines"),
    ("figures", "Figures"),
    ("timings", "Timings"),
    ("data", "Data"),
    ("protocol", "Protocol"),
    ("params", "Parameters"),
    ("software", "Software"),
)


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    # StrictUndefined: a misspelt name in a template fails the build instead of printing nothing.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _parts():
    """The macros of templates/parts.html.j2, callable from Python."""
    return _env().get_template("parts.html.j2").module


def css() -> str:
    return (TEMPLATES / "report.css").read_text(encoding="utf-8")


# --------------------------------------------------------------- sections as HTML fragments
def experiment_table(exp: str, s: dict, params, summary: dict) -> str:
    return str(_parts().experiment_table(tables.experiment_table(exp, s, params, summary)))


def sampler_section(summary: dict) -> str:
    return str(_parts().sampler_section(tables.sampler_tables(summary)))


def diagnostics_section(diagnostics: dict | None, params) -> str:
    """Conditioning ablation and oracle tables (``lmid diagnose``)."""
    return str(_parts().diagnostics_section(tables.diagnostics_tables(diagnostics, params)))


def baselines_section(baselines: dict | None, params) -> str:
    """The numbers of ``lmid check-baselines``: are the baselines trained?"""
    return str(_parts().baselines_section(tables.baselines_tables(baselines, params)))


def timings_table(summary: dict, params) -> str:
    return str(_parts().timings(tables.timings_table(summary, params)))


# --------------------------------------------------------------------------------- the page
def _figure_item(item: dict) -> dict:
    out = {**item, "name": Path(item["path"]).name, "src": ""}
    if not item["missing"]:
        data = base64.b64encode(Path(item["path"]).read_bytes()).decode("ascii")
        out["src"] = f"data:image/png;base64,{data}"
    return out


def _notice(params) -> dict:
    """The demo and test presets train every network for minutes on a CPU: the page says so first."""
    if params.preset == "paper":
        return {"kind": None}
    if params.preset == "study":
        return {
            "kind": "study",
            "steps": f"{params.diffusion.train.steps:,}",
            "batch_size": params.diffusion.train.batch_size,
        }
    return {"kind": "demo"}


def build_report(
    params,
    params_path,
    reports_dir,
    models_dir,
    metrics_dir,
    translations_dir,
    slices_dir,
    out_path,
    unseen_slices_dir=None,
    baseline_images_path=None,
) -> Path:
    import yaml

    reports_dir, models_dir, metrics_dir, translations_dir, slices_dir, out_path = map(
        Path, (reports_dir, models_dir, metrics_dir, translations_dir, slices_dir, out_path)
    )
    inp = load_inputs(
        reports_dir,
        translations_dir,
        slices_dir,
        unseen_slices_dir,
        baseline_images_path,
        is_unseen=lambda experiment: is_unseen_experiment(experiment, params),
    )
    summary = inp.summary
    fig_dir = reports_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = draw_figures(
        params,
        summary,
        inp.test,
        inp.translations,
        metrics_dir,
        models_dir,
        fig_dir,
        inp.diagnostics,
        unseen_split=inp.unseen_test,
        baselines=inp.baselines,
        baseline_images=inp.baseline_images,
    )

    git = environment.git_commit()
    dev = environment.device()
    main = summary["main_experiment"]
    experiments = list(summary["experiments"])

    def entry(exp):
        s = summary["experiments"][exp]
        return {"exp": exp, "s": s, "table": tables.experiment_table(exp, s, params, summary)}

    dirty = " (working tree has uncommitted changes)" if git["dirty"] else ""
    env_items = [
        ("git commit", git["commit"] + dirty),
        ("report built on", f"{dev['platform']}; CPU {dev['cpu']} × {dev['cpu_count']}; CUDA: {dev['cuda']}"),
    ]
    env_items += [(k, str(v)) for k, v in environment.versions().items()]
    context = {
        "title": params.report.title,
        "css": css(),
        "preset": params.preset,
        "data_source": params.data.source,
        "now": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git["commit"],
        "nav": NAV,
        "notice": _notice(params),
        "paper_label": PAPER_LABEL,
        "main": entry(main),
        "second_source": [entry(e) for e in experiments if e != main and not is_unseen_experiment(e, params)],
        "unseen": [entry(e) for e in experiments if is_unseen_experiment(e, params)],
        "protocol_shift": tables.protocol_shift(summary, params),
        "claims": tables.claims_table(summary, params),
        "sampler": tables.sampler_tables(summary),
        "diagnostics": tables.diagnostics_tables(inp.diagnostics, params),
        "baselines": tables.baselines_tables(inp.baselines, params),
        "adequacy": tables.adequacy_tables(inp.baselines, summary, params),
        "figures": [_figure_item(i) for i in figs.items],
        "timings": tables.timings_table(summary, params),
        "data_items": tables.data_items(params, slices_dir, inp.splits),
        "protocol_items": protocol_items(params, summary, models_dir, inp.manifest),
        "params_path": str(params_path),
        "params_text": yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=110),
        "environment": env_items,
    }
    write_text(out_path, _env().get_template("report.html.j2").render(context))
    return out_path
