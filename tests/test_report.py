"""The report end to end on a tiny synthetic project: segmenter → evaluate → aggregate → HTML.

The HTML must be one self-contained file (no http(s) references, images embedded) and must render
in a real browser: headless Chromium takes a screenshot that must not be blank, and the dumped DOM
must hold the results table with the methods' names.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from lmid.cli import main as lmid_main
from lmid.config import load_params
from lmid.data.slices import SliceSet, load_slices, split_fingerprint
from lmid.io import save_npz, write_json, write_text
from lmid.report.captions import figure_files

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SIZE = 32
METHODS = ("lmidiffusion", "sdedit", "cyclegan", "cdm", "identity", "histmatch")


# ----------------------------------------------------------------------------- synthetic inputs


def _aggregate_inputs(d: Path) -> list:
    """`lmid aggregate`'s input options for the files under the data folder d (as the rule names them)."""
    scores = sorted(x for x in (d / "metrics").glob("*/*.csv") if x.parent.name != "sampler")
    sampler = sorted((d / "metrics" / "sampler").glob("*.csv"))
    infos = sorted((d / "models").glob("*/train_info.json"))
    return (
        ["--scores", *scores]
        + (["--sampler", *sampler] if sampler else [])
        + (["--infos", *infos] if infos else [])
        + ["--manifest", d / "slices" / "manifest.json"]
    )


def phantom(n: int, rng: np.random.Generator, extra: bool):
    """Concentric discs: WM inside, GM ring, CSF ring; per-slice jitter of centre and radii."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    contrast = {"T1": (0.22, 0.5, 0.8), "PD": (0.9, 0.7, 0.58), "T2": (0.95, 0.52, 0.4)}
    imgs = {k: np.zeros((n, SIZE, SIZE), np.float32) for k in contrast}
    label = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        cy, cx = SIZE / 2 + rng.uniform(-1.5, 1.5, 2)
        r = np.hypot(yy - cy, xx - cx)
        r_out = 13 + rng.uniform(-1, 1)
        label[i][r < r_out] = 1
        label[i][r < 0.78 * r_out] = 2
        label[i][r < 0.45 * r_out] = 3
        for k, (csf, gm, wm) in contrast.items():
            lut = np.array([0.0, csf, gm, wm], np.float32)
            imgs[k][i] = np.clip(lut[label[i]] + rng.normal(0, 0.025, (SIZE, SIZE)) * (label[i] > 0), 0, 1)
    split = SliceSet(
        source=imgs["PD"],
        target=imgs["T1"],
        mask=label > 0,
        label=label,
        subject=np.array([f"IXI{100 + i // 3:03d}" for i in range(n)]),
        slice_index=np.array([40 + i % 3 for i in range(n)]),
        has_label=True,
        extra={"T2": imgs["T2"]} if extra else {},
    )
    return split


def build_project(root: Path, n_test: int = 8) -> dict:
    """Write every input the evaluation and report steps read, under ``root/data``."""
    rng = np.random.default_rng(0)
    slices = root / "data" / "slices"
    train, val, test = phantom(12, rng, False), phantom(4, rng, True), phantom(n_test, rng, True)
    train.save(slices / "train.npz")
    val.save(slices / "val.npz")
    test.save(slices / "test.npz")
    write_json(
        slices / "manifest.json",
        {
            "data_source": "simulated",
            "counts": {"train": 12, "val": 4, "test": n_test},
            "split_subjects": {"train": ["IXI100"], "val": ["IXI101"], "test": ["IXI102"]},
            "skipped_subjects": [],
            "subjects": {"IXI100": {"n_axial": 60, "slice_affine": np.eye(4).tolist()}},
        },
    )
    quality = {"lmidiffusion": 0.03, "sdedit": 0.08, "cyclegan": 0.05, "cdm": 0.015}
    made_from = np.asarray(split_fingerprint(load_slices(slices / "test.npz")))  # as translate records it
    for exp, src in (("pd2t1", test.source), ("t22t1", test.extra["T2"])):
        for m in METHODS:
            if m in quality:
                img = np.clip(test.target + rng.normal(0, quality[m], test.target.shape), 0, 1).astype(np.float32)
            elif m == "identity":
                img = src.copy()
            else:
                img = np.clip(1.0 - src, 0, 1) * test.mask
            std = (
                (np.abs(rng.normal(0, 0.02, img.shape)) * test.mask).astype(np.float32)
                if m == "lmidiffusion"
                else np.zeros_like(img)
            )
            nfe = {"lmidiffusion": 50, "sdedit": 10, "cyclegan": 1, "cdm": 11}.get(m, 0)
            save_npz(
                root / "data" / "translations" / exp / m / "translations.npz",
                image=img.astype(np.float32),
                std=std,
                index=np.arange(n_test),
                subject=test.subject,
                slice_index=test.slice_index,
                nfe=np.full(n_test, nfe),
                wall_s=np.full(n_test, 0.01 * (nfe + 1)),
                source_modality=np.asarray(exp[:2].upper()),
                method=np.asarray(m),
                split_fingerprint=made_from,
            )
    models = root / "data" / "models"
    for m in METHODS:
        info = {"method": m, "access": "target training slices only", "train_wall_s": 12.5, "steps": 40}
        if m == "sdedit":
            info["t0_sweep"] = [{"t0": 0.3, "psnr": 18.2, "ssim": 0.61}, {"t0": 0.5, "psnr": 17.1, "ssim": 0.55}]
            info["t0"] = 0.3
        write_json(models / m / "train_info.json", info)
        if m in ("identity", "histmatch"):
            write_text(models / m / "train_log.csv", "step\n")
            continue
        steps = np.arange(1, 41)
        if m == "cdm":
            rows = ["step,stage,loss"] + [
                f"{s},{st},{1.0 / s + k:.5f}" for k, st in enumerate(("mrm", "mdn", "unet")) for s in steps
            ]
        else:
            rows = ["step,loss,loss_d"] + [f"{s},{1.0 / np.sqrt(s):.5f},{0.5 + 0.1 * np.sin(s):.5f}" for s in steps]
        write_text(models / m / "train_log.csv", "\n".join(rows) + "\n")
    params = load_params(
        ROOT / "params.yaml",
        {
            "methods": list(METHODS),
            "evaluate": {"bootstrap": 200, "sampler_settings": ["ddim-25", "ddim-10"]},
            "report": {"grid_slices": 3},
            "segment": {"max_voxels": 5000},
            "prepare": {"size": SIZE},
        },
    )
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return {"params": params, "params_path": params_path, "test": test}


def run_pipeline(root: Path) -> dict:
    """The evaluation half of the pipeline through the CLI, as Snakemake/DVC run it."""
    built = build_project(root)
    d = root / "data"
    p = str(built["params_path"])

    def lmid(*args):
        assert lmid_main([*map(str, args)]) == 0, args

    lmid("fit-segmenter", "--params", p, "--train", d / "slices/train.npz", "--out", d / "models/kmeans.json")
    for exp in ("pd2t1", "t22t1"):
        for m in METHODS:
            lmid(
                "evaluate",
                "--params",
                p,
                "--method",
                m,
                "--translations",
                d / f"translations/{exp}/{m}/translations.npz",
                "--slices",
                d / "slices/test.npz",
                "--segmenter",
                d / "models/kmeans.json",
                "--out",
                d / f"metrics/{exp}/{m}.csv",
            )
    # Sampler sweep: reuse LMIDiffusion's translations of the first 4 test slices as "settings".
    for setting in ("ddim-25", "ddim-10"):
        src = np.load(d / "translations/pd2t1/lmidiffusion/translations.npz")
        sub = {k: (src[k][:4] if src[k].ndim else src[k]) for k in src.files}
        save_npz(d / f"translations/sampler/{setting}/translations.npz", **sub)
        lmid(
            "evaluate",
            "--params",
            p,
            "--method",
            "lmidiffusion",
            "--translations",
            d / f"translations/sampler/{setting}/translations.npz",
            "--slices",
            d / "slices/test.npz",
            "--segmenter",
            d / "models/kmeans.json",
            "--out",
            d / f"metrics/sampler/{setting}.csv",
        )
    lmid("aggregate", "--params", p, *_aggregate_inputs(d), "--out-dir", root / "reports")
    before = _digest(d)
    lmid(
        "report",
        "--params",
        p,
        "--reports-dir",
        root / "reports",
        "--models-dir",
        d / "models",
        "--metrics-dir",
        d / "metrics",
        "--translations-dir",
        d / "translations",
        "--slices-dir",
        d / "slices",
        "--out",
        root / "reports/index.html",
    )
    assert _digest(d) == before, "the report step must not touch its inputs"
    return built


def _digest(folder: Path) -> dict:
    import hashlib

    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    built = run_pipeline(root)
    return root, built


# ------------------------------------------------------------------------------------------ tests
def test_outputs_exist(project):
    root, _ = project
    reports = root / "reports"
    for name in (
        "metrics.json",
        "summary.json",
        "tables/table.md",
        "tables/table.csv",
        "tables/table.tex",
        "tables/table_t22t1.csv",
        "tables/table_t22t1.tex",
        "tables/sampler.csv",
        "tables/sdedit_t0.csv",
        "index.html",
    ):
        assert (reports / name).is_file(), name
    figs = {p.name for p in (reports / "figures").glob("*.png")}
    # Exactly the files that the report rule declares (captions.figure_files), every one present.
    declared = figure_files(["pd2t1", "t22t1"])
    assert {f"figures/{name}" for name in figs} == {f for files in declared.values() for f in files}
    assert len(declared["grid"]) == len(declared["metrics"]) == 2 and len(declared["lmi"]) == 1
    assert {
        "grid_pd2t1.png",
        "grid_t22t1.png",
        "segmentation.png",
        "metrics_pd2t1.png",
        "metrics_t22t1.png",
        "lmi.png",
        "loss_curves.png",
        "uncertainty.png",
        "sampler.png",
    } <= figs
    table = (reports / "tables/table.md").read_text()
    assert "paper (IXI, not our data)" in table and "supervised upper bound" in table and "sees 11 % source" in table
    assert "0.88 ± 0.05" in table  # the paper's LMIDiffusion Dice beside ours


def test_html_is_self_contained(project):
    root, _ = project
    page = (root / "reports/index.html").read_text()
    assert not re.search(r"https?://", page), "the report must not reference anything outside itself"
    assert not re.search(r"<(script|link|iframe)\b", page)
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) >= 8 and all(s.startswith("data:image/png;base64,") for s in srcs)
    png = base64.b64decode(srcs[0].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    for text in (
        'id="table-pd2t1"',
        'id="table-t22t1"',
        'id="table-sampler"',
        'id="claims"',
        "beats SDEdit on Dice",
        "LMIDiffusion",
        "CycleGAN",
        '<span class="tag">paper (IXI, not our data)</span>',  # the paper's rows, tagged
        "Protocol choices",
        "git commit",
        "scikit-learn",
        "seed: 1234",
        "IXI102",
    ):
        assert text in page, text


def test_report_deterministic_apart_from_timestamp(project, tmp_path):
    root, built = project
    out = tmp_path / "again.html"
    assert (
        lmid_main(
            [
                "report",
                "--params",
                str(built["params_path"]),
                "--reports-dir",
                str(root / "reports"),
                "--models-dir",
                str(root / "data/models"),
                "--metrics-dir",
                str(root / "data/metrics"),
                "--translations-dir",
                str(root / "data/translations"),
                "--slices-dir",
                str(root / "data/slices"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    strip = lambda s: re.sub(r"Generated [^·]+·", "", s)  # noqa: E731
    assert strip(out.read_text()) == strip((root / "reports/index.html").read_text())


def test_missing_optional_inputs_say_not_run(tmp_path):
    """No sampler sweep, no second source, no train_info: the report still builds and says so."""
    build_project(tmp_path)
    d = tmp_path / "data"
    p = str(tmp_path / "params.yaml")
    assert (
        lmid_main(
            [
                "fit-segmenter",
                "--params",
                p,
                "--train",
                str(d / "slices/train.npz"),
                "--out",
                str(d / "models/kmeans.json"),
            ]
        )
        == 0
    )
    for m in ("lmidiffusion", "identity"):
        assert (
            lmid_main(
                [
                    "evaluate",
                    "--params",
                    p,
                    "--method",
                    m,
                    "--translations",
                    str(d / f"translations/pd2t1/{m}/translations.npz"),
                    "--slices",
                    str(d / "slices/test.npz"),
                    "--segmenter",
                    str(d / "models/kmeans.json"),
                    "--out",
                    str(d / f"metrics/pd2t1/{m}.csv"),
                ]
            )
            == 0
        )
    shutil.rmtree(d / "models" / "sdedit")
    assert (
        lmid_main(["aggregate", "--params", p, *map(str, _aggregate_inputs(d)), "--out-dir", str(tmp_path / "r")]) == 0
    )
    md = (tmp_path / "r/tables/table.md").read_text()
    assert md.count("Not run") == 2
    assert (
        lmid_main(
            [
                "report",
                "--params",
                p,
                "--reports-dir",
                str(tmp_path / "r"),
                "--models-dir",
                str(d / "models"),
                "--metrics-dir",
                str(d / "metrics"),
                "--translations-dir",
                str(d / "translations"),
                "--slices-dir",
                str(d / "slices"),
                "--out",
                str(tmp_path / "r/index.html"),
            ]
        )
        == 0
    )
    page = (tmp_path / "r/index.html").read_text()
    assert "Not run: no <code>data/metrics/sampler/*.csv</code>" in page
    assert "Not run: no second-source experiment" in page


def test_report_refuses_translations_of_another_split(project, tmp_path, capsys):
    """A translations file that records another split than the test split it is drawn beside."""
    root, built = project
    translations = tmp_path / "translations"
    shutil.copytree(root / "data/translations", translations)
    path = translations / "t22t1" / "cdm" / "translations.npz"
    arrays = dict(np.load(path))
    arrays["split_fingerprint"] = np.asarray(split_fingerprint(load_slices(root / "data/slices/val.npz")))
    save_npz(path, **arrays)
    rc = lmid_main(
        [
            "report",
            "--params",
            str(built["params_path"]),
            "--reports-dir",
            str(root / "reports"),
            "--models-dir",
            str(root / "data/models"),
            "--metrics-dir",
            str(root / "data/metrics"),
            "--translations-dir",
            str(translations),
            "--slices-dir",
            str(root / "data/slices"),
            "--out",
            str(tmp_path / "index.html"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and str(root / "data/slices/test.npz") in err and "another split" in err, err
    assert not (tmp_path / "index.html").exists()


def test_report_without_summary_is_a_clear_error(tmp_path, capsys):
    build_project(tmp_path)
    folders = {name: tmp_path / name for name in ("empty", "m", "t", "s")}
    for folder in folders.values():
        folder.mkdir()
    (folders["s"] / "test.npz").write_bytes(b"")  # the slices folder needs its test split to be accepted
    rc = lmid_main(
        [
            "report",
            "--params",
            str(tmp_path / "params.yaml"),
            "--reports-dir",
            str(folders["empty"]),
            "--models-dir",
            str(folders["m"]),
            "--metrics-dir",
            str(folders["m"]),
            "--translations-dir",
            str(folders["t"]),
            "--slices-dir",
            str(folders["s"]),
            "--out",
            str(tmp_path / "x.html"),
        ]
    )
    assert rc == 2
    assert "summary.json: file not found (run 'lmid aggregate' first)" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


# --------------------------------------------------------------------------------------- browser
def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)")
def test_renders_in_headless_chromium(project, tmp_path):
    from PIL import Image

    root, _ = project
    url = (root / "reports/index.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", url], tmp_path)
    assert shot.is_file(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    assert img.std() > 20, "screenshot looks blank"
    colours = np.unique((img[::4, ::4] // 16).reshape(-1, 3), axis=0)
    assert len(colours) > 20, "screenshot has too few distinct colours"
    dom = _chromium(["--dump-dom", url], tmp_path).stdout
    assert 'id="table-pd2t1"' in dom
    for name in ("LMIDiffusion", "SDEdit", "CycleGAN", "CDM", "Identity"):
        assert name in dom
    # Keep a copy for a human to look at (pytest's tmp folders are kept for the last runs).
    shutil.copy(shot, root / "reports" / "screenshot.png")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)")
@pytest.mark.parametrize("page", ["reports/index.html", "reports/study/index.html"])
def test_committed_preset_pages_render_with_every_section(page, tmp_path):
    """The pages a reader opens (one per preset, committed) render, and show every method and section."""
    from PIL import Image

    path = ROOT / page
    assert path.is_file(), f"{page} is not committed"
    shot = tmp_path / "shot.png"
    res = _chromium(
        [f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", path.resolve().as_uri()], tmp_path
    )
    assert shot.is_file(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert img.std() > 20, "screenshot looks blank"
    dom = _chromium(["--dump-dom", path.resolve().as_uri()], tmp_path).stdout
    # Every method the page's run scored, and the sections that exist for them.
    summary = json.loads((path.parent / "summary.json").read_text())
    methods = set(summary["experiments"]["pd2t1"]["methods"])
    anchors = [
        'id="table-pd2t1"',
        'id="table-t22t1"',
        'id="shift-pd2t1"',
        'id="table-baselines"',
        'id="table-ablation"',
        'id="unseen-protocol"',
    ] + (['id="table-cyclegan"'] if "cyclegan" in methods else [])
    for anchor in anchors:
        assert anchor in dom, anchor
    from lmid.registry import METHOD_NAMES, spec

    names = {m: spec(m).display for m in METHOD_NAMES}
    assert {"lmidiffusion", "identity"} <= methods
    for method in methods:
        assert f">{names[method]}" in dom, method
    assert dom.count("data:image/png;base64,") >= 10  # the figures are embedded, none missing
    if methods == set(names):  # a run of every method leaves no column of the main table empty
        assert "not run" not in dom.split('id="results"')[1].split("</section>")[0]


# ------------------------------------------------------------------------------------- captions
@pytest.mark.filterwarnings('ignore:Argument "writer_name":PendingDeprecationWarning')  # as Snakemake calls it
def test_rst_captions_are_generated_from_the_captions_module(tmp_path):
    """workflow/report/*.rst (Snakemake's captions) are written by lmid.report.captions, so they
    cannot drift from the HTML report's captions; each is valid RST that Snakemake's Jinja pass keeps."""
    import jinja2
    from docutils.core import publish_parts

    from lmid.report.captions import rst_files, write_rst_captions

    folder = ROOT / "workflow" / "report"
    expected = rst_files()
    assert {p.name for p in folder.glob("*.rst")} == set(expected)
    for name, text in expected.items():
        assert (folder / name).read_text(encoding="utf-8") == text, (
            f"{name} differs: run lmid.report.captions.write_rst_captions('workflow/report')"
        )
        assert jinja2.Environment().from_string(text).render() == text.rstrip("\n"), name
        publish_parts(text, writer_name="html", settings_overrides={"halt_level": 2, "report_level": 5})
    # The report rule names one caption per figure of captions.FIGURE_FILES, each one written here.
    from lmid.report.captions import FIGURE_CATEGORIES, FIGURE_FILES

    rule = (ROOT / "workflow/rules/report.smk").read_text()
    assert 'caption=f"../report/{name}.rst"' in rule and "figure_files(EXPERIMENTS).items()" in rule
    assert {f"{name}.rst" for name in FIGURE_FILES} <= set(expected) and set(FIGURE_CATEGORIES) == set(FIGURE_FILES)
    assert {p.name for p in write_rst_captions(tmp_path)} == set(expected)


def test_html_figure_captions_come_from_the_captions_module(project):
    from markupsafe import escape

    from lmid.report import captions

    root, _ = project
    page = (root / "reports/index.html").read_text()
    for text in (captions.loss_curves(), captions.uncertainty(), captions.grid(3, "PD", "T1"), captions.title("lmi")):
        assert str(escape(text)) in page, text
