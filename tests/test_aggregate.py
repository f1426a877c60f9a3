"""Bootstrap CIs, paired tests and ``lmid aggregate`` on synthetic per-slice CSVs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kstest, wilcoxon

from lmid.config import load_params
from lmid.errors import InputFileError
from lmid.evaluation.aggregate import aggregate
from lmid.evaluation.display import PAPER
from lmid.evaluation.metrics import COLUMNS, write_metrics_csv
from lmid.evaluation.stats import bootstrap_ci, wilcoxon_p
from lmid.io import write_json

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_ci_contains_mean_and_narrows():
    rng = np.random.default_rng(0)
    small = rng.normal(0.8, 0.05, 12)
    large = rng.normal(0.8, 0.05, 300)
    lo_s, hi_s = bootstrap_ci(small, 1000, 0.95, seed=1)
    lo_l, hi_l = bootstrap_ci(large, 1000, 0.95, seed=1)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < 0.5 * (hi_s - lo_s)  # width ~ 1/sqrt(n): 5× narrower expected
    assert bootstrap_ci(small, 1000, 0.95, seed=1) == (lo_s, hi_s)  # seeded
    lo90, hi90 = bootstrap_ci(small, 1000, 0.90, seed=1)
    assert lo_s <= lo90 and hi90 <= hi_s
    assert bootstrap_ci([0.5], 100) == (0.5, 0.5)
    assert all(np.isnan(bootstrap_ci([np.nan], 100)))


def test_subject_bootstrap_matches_plain_with_one_slice_per_subject():
    x = np.random.default_rng(3).normal(0.5, 0.1, 40)
    plain = bootstrap_ci(x, 500, 0.95, seed=4)
    clustered = bootstrap_ci(x, 500, 0.95, seed=4, groups=[f"s{i}" for i in range(40)])
    np.testing.assert_allclose(clustered, plain, rtol=0, atol=1e-12)  # the same draws


def test_subject_bootstrap_resamples_whole_subjects():
    """Ten identical slices per subject carry one subject's information, not ten slices'."""
    subject_means = np.random.default_rng(5).normal(0.5, 0.1, 6)
    x = np.repeat(subject_means, 10)
    groups = np.repeat([f"IXI{i:03d}" for i in range(6)], 10)
    by_subject = bootstrap_ci(x, 2000, 0.95, seed=6, groups=groups)
    assert by_subject == pytest.approx(bootstrap_ci(subject_means, 2000, 0.95, seed=6), abs=1e-12)
    by_slice = bootstrap_ci(x, 2000, 0.95, seed=6)
    assert (by_subject[1] - by_subject[0]) > 2.5 * (by_slice[1] - by_slice[0])  # ~sqrt(10) wider
    # Unequal subject sizes: each draw's mean is over all drawn slices (brute force on one draw).
    y = np.array([1.0, 1.0, 1.0, 0.0])
    lo, hi = bootstrap_ci(y, 4000, 1.0, seed=0, groups=["a", "a", "a", "b"])
    assert (lo, hi) == (0.0, 1.0)  # draws {b,b} and {a,a}; {a,b} gives 3/4
    assert bootstrap_ci(y, 100, 0.95, groups=["a"] * 4) == (0.75, 0.75)  # one subject: no spread
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(y, 100, groups=["a"])


# ------------------------------------------------------------------------------------- Wilcoxon
def test_wilcoxon_small_for_a_clearly_better_method():
    rng = np.random.default_rng(1)
    b = rng.normal(0.7, 0.05, 30)
    a = b + 0.05 + rng.normal(0, 0.01, 30)
    assert wilcoxon_p(a, b) < 1e-4
    assert wilcoxon_p(b, b) == 1.0  # the same method twice


def test_wilcoxon_uniform_for_exchangeable_methods():
    """Two methods drawn from the same distribution: p-values ~ U(0, 1)."""
    rng = np.random.default_rng(2)
    ps = np.array([wilcoxon_p(rng.normal(0, 1, 25), rng.normal(0, 1, 25)) for _ in range(300)])
    assert kstest(ps, "uniform").pvalue > 0.01
    assert 0.01 < (ps < 0.05).mean() < 0.11


# ------------------------------------------------------------------------------------ aggregate
def _csv(path: Path, method: str, dice_km, psnr, ssim, dice_gt=None, nfe=10, wall=0.5):
    n = len(psnr)
    rows = []
    for i in range(n):
        r = {c: np.nan for c in COLUMNS}
        r.update(
            method=method,
            index=i,
            subject=f"IXI{i // 4:03d}",
            slice_index=50 + i % 4,
            dice_km_mean=dice_km[i],
            psnr=psnr[i],
            ssim=ssim[i],
            psnr_mask=psnr[i] - 1,
            ssim_mask=ssim[i],
            nfe=nfe,
            wall_s=wall,
        )
        for c in ("csf", "gm", "wm"):
            r[f"dice_km_{c}"] = dice_km[i]
            if dice_gt is not None:
                r[f"dice_gt_{c}"] = dice_gt[i]
        if dice_gt is not None:
            r["dice_gt_mean"] = dice_gt[i]
        rows.append(r)
    write_metrics_csv(path, pd.DataFrame(rows, columns=list(COLUMNS)))


@pytest.fixture()
def metrics(tmp_path):
    rng = np.random.default_rng(5)
    n = 16
    data = {}
    for m, (d, p, s) in {
        "lmidiffusion": (0.85, 22.0, 0.7),
        "sdedit": (0.80, 19.0, 0.6),
        "identity": (0.3, 9.0, 0.1),
    }.items():
        vals = (np.clip(rng.normal(d, 0.03, n), 0, 1), rng.normal(p, 1.0, n), np.clip(rng.normal(s, 0.05, n), 0, 1))
        gt = np.clip(vals[0] + rng.normal(0, 0.02, n), 0, 1)
        data[m] = (*vals, gt)
        _csv(tmp_path / "metrics" / "pd2t1" / f"{m}.csv", m, *vals, dice_gt=gt)
        _csv(tmp_path / "metrics" / "t22t1" / f"{m}.csv", m, *vals)  # no labels: Dice vs K-Means
    _csv(tmp_path / "metrics" / "sampler" / "ddim-10.csv", "lmidiffusion", *data["lmidiffusion"][:3], nfe=10, wall=0.1)
    _csv(
        tmp_path / "metrics" / "sampler" / "ancestral-1000.csv",
        "lmidiffusion",
        *data["lmidiffusion"][:3],
        nfe=1000,
        wall=9.0,
    )
    _csv(tmp_path / "metrics" / "sampler" / "notes.csv", "lmidiffusion", *data["lmidiffusion"][:3])  # ignored
    write_json(
        tmp_path / "models" / "sdedit" / "train_info.json",
        {"train_wall_s": 3.0, "t0": 0.3, "t0_sweep": {"0.3": {"psnr": 18.0}, "0.5": {"psnr": 17.0}}},
    )
    params = load_params(
        ROOT / "params.yaml", {"evaluate": {"bootstrap": 300, "sampler_settings": ["ancestral-1000", "ddim-10"]}}
    )
    return tmp_path, params, data


def _run(root: Path, params, out: str):
    """The files the workflow would name: every score file, the sampler table's, the train infos."""
    metrics = root / "metrics"
    scores = sorted(p for p in metrics.glob("*/*.csv") if p.parent.name != "sampler")
    manifest = root / "slices" / "manifest.json"
    return aggregate(
        params,
        scores,
        root / out,
        infos=sorted((root / "models").glob("*/train_info.json")),
        manifest=manifest if manifest.is_file() else None,
        sampler=sorted((metrics / "sampler").glob("*.csv")),
    )


def test_metrics_json_is_deterministic_and_correct(metrics):
    root, params, data = metrics
    _run(root, params, "a")
    _run(root, params, "b")
    a = (root / "a" / "metrics.json").read_bytes()
    assert a == (root / "b" / "metrics.json").read_bytes()
    assert (root / "a" / "summary.json").read_bytes() == (root / "b" / "summary.json").read_bytes()
    for name in ("table.md", "table.csv", "table.tex", "table_t22t1.csv", "sampler.csv"):
        assert (root / "a" / "tables" / name).read_bytes() == (root / "b" / "tables" / name).read_bytes(), name
    m = json.loads(a)
    assert list(m) == sorted(m) and list(m["pd2t1"]) == sorted(m["pd2t1"])
    for method, (dice_km, psnr, ssim, gt) in data.items():
        # Main experiment has labels: Dice = vs ground truth; t22t1 has none: Dice = vs K-Means.
        assert m["pd2t1"][method]["dice"] == round(float(np.mean(gt)), 6)
        assert m["pd2t1"][method]["dice_km"] == round(float(np.mean(dice_km)), 6)
        assert m["t22t1"][method]["dice"] == round(float(np.mean(dice_km)), 6)
        assert m["pd2t1"][method]["psnr"] == round(float(np.mean(psnr)), 6)
        assert m["pd2t1"][method]["ssim"] == round(float(np.mean(ssim)), 6)
    assert set(m["sampler"]) == {"ddim-10", "ancestral-1000"}


def test_summary_statistics(metrics):
    root, params, data = metrics
    s = _run(root, params, "a")
    e = s["experiments"]["pd2t1"]
    assert e["dice_reference"] == "ground truth"
    assert s["experiments"]["t22t1"]["dice_reference"] == "K-Means of the real target"
    psnr = data["sdedit"][1]
    st = e["methods"]["sdedit"]["psnr"]
    assert st["std"] == pytest.approx(np.std(psnr, ddof=1), abs=1e-6)
    assert st["ci_low"] < st["mean"] < st["ci_high"]
    # The CI resamples the 4 subjects (4 slices each): the brute-force subject bootstrap gives it.
    assert e["methods"]["sdedit"]["n_subjects"] == 4 and st["n_groups"] == 4
    assert (st["ci_low"], st["ci_high"]) == pytest.approx(
        bootstrap_ci(psnr, 300, 0.95, seed=params.seed + 907, groups=np.arange(16) // 4), abs=1e-6
    )
    p = wilcoxon(psnr, data["lmidiffusion"][1]).pvalue
    assert st["p_vs_reference"] == pytest.approx(p, abs=1e-6)
    assert e["methods"]["lmidiffusion"]["psnr"]["p_vs_reference"] is None
    assert [r["setting"] for r in s["sampler"]["settings"]] == ["ancestral-1000", "ddim-10"]  # params order
    assert s["sdedit_t0"]["chosen_t0"] == 0.3 and s["sdedit_t0"]["columns"][0] == "t0"
    assert s["timings"]["lmidiffusion"]["nfe_per_slice"] == 10


def test_tables_show_paper_numbers_labelled(metrics):
    root, params, _ = metrics
    _run(root, params, "a")
    md = (root / "a" / "tables" / "table.md").read_text()
    for m, vals in PAPER.items():
        assert f"{vals['psnr'][0]:.2f} ± {vals['psnr'][1]:.2f}" in md
    assert "paper (IXI, not our data)" in md and "Dice against the ground-truth labels" in md
    assert "Dice against K-Means of the real T1 slice" in md  # the t22t1 caption
    assert "StyleGAN2-ADA" in md and "not run" in md  # a paper method we did not run keeps its column
    assert "| subjects (n) | 0 | 0 | 4 | 4 | 4 |" in md and "resamples of whole subjects" in md
    tidy = pd.read_csv(root / "a" / "tables" / "table.csv")
    assert set(tidy["source"]) == {"ours", "paper (IXI, not our data)"}
    tex = (root / "a" / "tables" / "table.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "$\\pm$" in tex


def test_missing_main_experiment_is_an_error(metrics):
    root, params, _ = metrics
    import shutil

    shutil.rmtree(root / "metrics" / "pd2t1")
    with pytest.raises(InputFileError, match="pd2t1: no per-slice metrics of the main experiment"):
        _run(root, params, "a")


def test_optional_sections_not_run(metrics):
    root, params, _ = metrics
    import shutil

    shutil.rmtree(root / "metrics" / "sampler")
    shutil.rmtree(root / "models")
    s = _run(root, params, "a")
    assert s["sampler"] == {"status": "not run"} and s["sdedit_t0"]["status"] == "not run"
    md = (root / "a" / "tables" / "table.md").read_text()
    assert md.count("Not run") == 2
    assert "sampler" not in json.loads((root / "a" / "metrics.json").read_text())


def _tissue_scores(root: Path) -> None:
    """Contrast, tissue order and the Dice ceiling in two of the main experiment's score files."""
    for m, scale in (("lmidiffusion", 0.8), ("identity", -0.5)):
        path = root / "metrics" / "pd2t1" / f"{m}.csv"
        df = pd.read_csv(path)
        df["contrast_wm_gm"] = scale
        df["contrast_gm_csf"] = scale / 2
        df["tissue_order"] = float(scale > 0)
        df["dice_ceiling"] = 0.72
        write_metrics_csv(path, df)


def test_table_rows_ceiling_contrast_and_paper_beside_kmeans_dice(metrics):
    root, params, data = metrics
    _tissue_scores(root)
    s = _run(root, params, "a")
    e = s["experiments"]["pd2t1"]["methods"]
    assert e["lmidiffusion"]["contrast_wm_gm"]["mean"] == pytest.approx(0.8)
    assert e["identity"]["tissue_order"]["mean"] == 0.0
    assert e["identity"]["contrast_wm_gm"]["p_vs_reference"] < 0.01
    lines = (root / "a" / "tables" / "table.md").read_text().splitlines()
    labels = [ln.split("|")[1].strip() for ln in lines if ln.startswith("| ") and "---" not in ln]
    # The paper's Dice (IXI: no labels) stands beside our Dice against K-Means of the real target.
    i = labels.index("Dice vs K-Means of real T1")
    assert labels[i + 1].startswith("Dice — paper") and labels[i + 2] == "Dice ceiling: K-Means on the real T1"
    row = next(ln for ln in lines if ln.startswith("| Dice ceiling"))
    assert "0.72" in row and "[" not in row  # the ceiling is shown without an interval
    assert any(lbl.startswith("Tissue contrast WM−GM") for lbl in labels)
    # Sampler: both settings score the same slices alike, so the cheaper one is "as good".
    assert s["sampler"]["smallest_nfe"]["setting"] == "ddim-10"


def _markdown_rows(md: str, exp: str) -> list[list[str]]:
    """Label and cells of each body row of one experiment's table in table.md."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("## ") and f"(experiment `{exp}`)" in ln)
    block = []
    for ln in lines[start + 1 :]:
        if ln.startswith("|"):
            block.append(ln)
        elif block:
            break
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in block[2:]]  # past head and rule


def _latex_rows(tex: str) -> list[list[str]]:
    """The body rows of a table.tex, cells turned back into the Markdown spelling."""
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    rows = []
    for ln in body.splitlines():
        if ln == "\\midrule":
            continue
        text = re.sub(r"\\textbf\{(.+?)\}", r"**\1**", ln.removesuffix(" \\\\"))
        for a, b in (("$\\pm$", "±"), ("$<$", "<"), ("--", "—"), ("\\%", "%"), ("\\_", "_"), ("\\&", "&")):
            text = text.replace(a, b)
        rows.append(text.split(" & "))
    return rows


def _html_rows(t: dict) -> list[list[str]]:
    """The report's table dict in the Markdown spelling: tag after the label, bold as **, CI after the value."""

    def text(c: dict) -> str:
        value = f"**{c['text']}**" if c["bold"] else c["text"]
        return f"{value} {c['ci']}" if c["ci"] else value

    return [[r["th"] + (f" — {r['tag']}" if r["tag"] else "")] + [text(c) for c in r["cells"]] for r in t["rows"]]


#: The summary's metric behind each of our scored rows (the CSV names rows by metric).
ROW_METRICS = {
    "Dice": "dice",
    "Dice vs K-Means of real T1": "dice_km",
    "Dice ceiling: K-Means on the real T1": "dice_ceiling",
    "PSNR (dB)": "psnr",
    "SSIM": "ssim",
    "Tissue contrast WM−GM (× real)": "contrast_wm_gm",
    "Tissue contrast GM−CSF (× real)": "contrast_gm_csf",
    "WM > GM > CSF (fraction of slices)": "tissue_order",
    "PSNR in brain (dB)": "psnr_mask",
    "SSIM in brain": "ssim_mask",
}


def test_markdown_latex_csv_and_html_tables_show_the_same_rows(metrics):
    """table.md, table*.tex, table*.csv and the HTML report's table: same labels, same order, same numbers."""
    from lmid.report.tables import experiment_table

    root, params, _ = metrics
    _tissue_scores(root)
    s = _run(root, params, "a")
    tables = root / "a" / "tables"
    md = (tables / "table.md").read_text()
    paper = " — paper (IXI, not our data)"
    for exp, stem in (("pd2t1", "table"), ("t22t1", "table_t22t1")):
        ours = _markdown_rows(md, exp)
        labels = [r[0] for r in ours]
        assert "subjects (n)" in labels and "p Dice (Wilcoxon vs LMIDiffusion)" in labels
        assert ("Dice ceiling: K-Means on the real T1" in labels) == (exp == "pd2t1")  # t22t1 has no labels
        assert _latex_rows((tables / f"{stem}.tex").read_text()) == ours, exp
        assert _html_rows(experiment_table(exp, s["experiments"][exp], params, s)) == ours, exp
        # The CSV: per method, our scored rows then the paper's, in table order, with the same numbers.
        scored = ours[: labels.index("p Dice (Wilcoxon vs LMIDiffusion)")]
        tidy = pd.read_csv(tables / f"{stem}.csv", keep_default_na=False)
        methods = s["experiments"][exp]["table_methods"]
        assert list(dict.fromkeys(tidy["method"])) == [m for m in methods if m in set(tidy["method"])]
        for j, m in enumerate(methods, start=1):
            cells = [(r[0], r[j]) for r in scored if not r[0].endswith(paper)]
            cells += [(r[0], r[j]) for r in scored if r[0].endswith(paper)]
            cells = [(label, cell) for label, cell in cells if "±" in cell]  # no "not run" or "—"
            records = tidy[tidy["method"] == m].to_dict("records")
            assert [(r["source"], r["metric"]) for r in records] == [
                ("paper (IXI, not our data)", label.removesuffix(paper).lower().split()[0])
                if label.endswith(paper)
                else ("ours", ROW_METRICS[label])
                for label, _ in cells
            ], (exp, m)
            for rec, (label, cell) in zip(records, cells):
                shown = re.findall(r"-?\d+\.\d+", cell)
                decimals = len(shown[0].split(".")[1])
                csv = [rec["mean"], rec["std"], rec["ci_low"], rec["ci_high"]][: len(shown)]
                assert len(shown) in (2, 4) and len(csv) == len(shown), (exp, m, label, cell)
                for value, text in zip(csv, shown):
                    assert abs(float(value) - float(text)) <= 0.5 * 10**-decimals + 1e-9, (exp, m, label, cell)


def test_protocol_shift_is_the_paired_change_per_method(metrics):
    root, params, data = metrics
    rng = np.random.default_rng(9)
    drop = {"lmidiffusion": -0.07, "sdedit": 0.02}
    unseen = {}
    for m, delta in drop.items():
        dice_km, psnr, ssim, gt = data[m]
        new_gt = np.clip(gt + delta + rng.normal(0, 0.01, len(gt)), 0, 1)
        unseen[m] = new_gt
        _csv(root / "metrics" / "pd2t1_3t" / f"{m}.csv", m, dice_km, psnr, ssim, dice_gt=new_gt)
    s = _run(root, params, "a")
    shift = s["protocol_shift"]["experiments"]["pd2t1"]
    assert shift["unseen_experiment"] == "pd2t1_3t" and set(shift["methods"]) == set(drop)
    for m in drop:
        change = unseen[m] - data[m][3]
        entry = shift["methods"][m]
        assert entry["pairs"] == len(change)
        assert entry["change"]["mean"] == pytest.approx(change.mean(), abs=1e-6)
        lo, hi = bootstrap_ci(change, 300, 0.95, seed=params.seed + 907, groups=np.arange(len(change)) // 4)
        assert (entry["change"]["ci_low"], entry["change"]["ci_high"]) == pytest.approx((lo, hi), abs=1e-6)
    md = (root / "a" / "tables" / "table.md").read_text()
    assert "Unseen protocol `3t`" in md and "| change |" in md
    assert (root / "a" / "tables" / "protocol_shift.csv").is_file()


# ------------------------------------------------------------------------------------ paper's claims
def test_claims_rows_are_paired_differences_with_subject_cis_and_verdicts(metrics):
    root, params, data = metrics
    s = _run(root, params, "a")
    rows = {(r["experiment"], r["claim"]): r for r in s["claims"]["rows"]}
    # LMIDiffusion (0.85) against SDEdit (0.80): the per-slice difference on ground-truth Dice.
    r = rows[("pd2t1", "beats SDEdit on Dice")]
    d = data["lmidiffusion"][3] - data["sdedit"][3]
    assert r["difference"] == pytest.approx(d.mean(), abs=2e-6) and r["pairs"] == len(d) and r["subjects"] == 4
    lo, hi = bootstrap_ci(d, 300, 0.95, seed=params.seed + 907, groups=np.arange(len(d)) // 4)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi), abs=2e-6)
    assert r["p"] == pytest.approx(wilcoxon_p(data["lmidiffusion"][3], data["sdedit"][3]), rel=1e-3, abs=1e-6)
    assert r["verdict"] == "supported" and lo > 0
    # PSNR: 22 against 19 dB.
    assert rows[("pd2t1", "beats SDEdit on PSNR")]["difference"] == pytest.approx(
        (data["lmidiffusion"][1] - data["sdedit"][1]).mean()
    )
    # Methods that did not run are "not tested", never a verdict.
    for other in ("CycleGAN", "StyleGAN2-ADA"):
        assert rows[("pd2t1", f"beats {other} on Dice")]["verdict"] == "not tested"
    # The new source (T2; no labels there, so Dice against K-Means): against its strongest competitor.
    t2 = next(r for (e, _), r in rows.items() if e == "t22t1")
    assert t2["other"] == "sdedit" and t2["claim"].startswith("adapts to a new source (T2)")
    assert t2["difference"] == pytest.approx((data["lmidiffusion"][0] - data["sdedit"][0]).mean())
    # Whether translation is needed at all: the SynthSeg-style reference is among params.methods but
    # was not scored here, so its row on each experiment is not tested either.
    from lmid.evaluation.claims import TRANSLATION_NEEDED

    for exp in ("pd2t1", "t22t1"):
        assert rows[(exp, TRANSLATION_NEEDED)]["other"] == "synthseg"
        assert rows[(exp, TRANSLATION_NEEDED)]["verdict"] == "not tested"
    assert s["claims"]["counts"]["not tested"] == 6 + 2
    md = (root / "a" / "tables" / "table.md").read_text()
    assert md.index("The paper's claims on this data") < md.index("## PD → T1")
    assert (root / "a" / "tables" / "claims.csv").read_text().count("\n") == len(rows) + 1


@pytest.mark.parametrize(
    "lo,hi,want",
    [
        (0.01, 0.2, "supported"),
        (-0.1, 0.1, "not supported"),
        (-0.3, -0.02, "contradicted"),
        (float("nan"), 0.1, "not tested"),
    ],
)
def test_claim_verdict_follows_the_interval(lo, hi, want):
    from lmid.evaluation.claims import verdict

    assert verdict(lo, hi) == want
