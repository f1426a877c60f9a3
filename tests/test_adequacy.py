"""The baselines' adequacy bars (lmid.evaluation.adequacy) read the right numbers and compare them right."""

from pathlib import Path

import pytest

from lmid.evaluation import adequacy


def _inputs(cycle_source=25.0, cycle_target=23.9, contrast=0.6, order=0.89, sg_w1=0.045, sd_w1=0.05, sat=0.03):
    baselines = {
        "floor": {"w1_to_real": 0.01},
        "methods": {
            "cyclegan": {
                "status": "ok",
                "psnr_mask_cycle_source": cycle_source,
                "psnr_mask_cycle_target": cycle_target,
            },
            "stylegan2": {"status": "ok", "w1_to_real": sg_w1},
            "sdedit": {"status": "ok", "w1_to_real": sd_w1},
        },
        "curves": {
            "stylegan2": [
                {"checks": {"inversion_saturated": 0.5, "real_saturated": 0.0}},  # an early snapshot: ignored
                {"checks": {"inversion_saturated": sat, "real_saturated": 0.01}},
            ]
        },
    }
    summary = {
        "main_experiment": "pd2t1",
        "experiments": {
            "pd2t1": {"methods": {"cyclegan": {"contrast_wm_gm": {"mean": contrast}, "tissue_order": {"mean": order}}}}
        },
        "train_info": {"sdedit": {"t0": 0.3, "t0_bracketed": True}},
    }
    return baselines, summary


def _by_what(checks):
    return {(c.method, c.what.split(" (")[0].split(":")[0]): c for c in checks}


def test_each_bar_is_compared_at_its_threshold():
    baselines, summary = _inputs()
    got = adequacy.checks(baselines, summary, ["cyclegan", "stylegan2", "sdedit", "lmidiffusion"])
    verdicts = [(c.method, c.passed) for c in got]
    assert verdicts == [
        ("cyclegan", True),  # 25.0 >= 24
        ("cyclegan", False),  # 23.9 < 24
        ("cyclegan", True),  # contrast 0.60 >= 0.60 (the bar itself passes)
        ("cyclegan", False),  # 0.89 < 0.90
        ("stylegan2", True),  # 0.045 / 0.01 = 4.5 <= 5
        ("stylegan2", True),  # the last snapshot: 0.03 - 0.01 = 0.02 <= 0.02
        ("sdedit", True),  # 5.0 <= 5 (on the bar)
        ("sdedit", True),  # t0 bracketed
    ]
    assert got[4].measured == pytest.approx(4.5)
    assert got[5].measured == pytest.approx(0.02)


def test_missing_numbers_are_not_measured_rather_than_passed():
    got = adequacy.checks({"floor": {}, "methods": {"cyclegan": {"status": "model.pt not found"}}}, None, ["cyclegan"])
    assert [c.passed for c in got] == [None] * 4
    assert {c.verdict for c in got} == {"not measured"}


def test_only_the_methods_of_the_run_are_checked():
    baselines, summary = _inputs()
    assert {c.method for c in adequacy.checks(baselines, summary, ["stylegan2"])} == {"stylegan2"}
    assert adequacy.checks(baselines, summary, ["lmidiffusion", "identity"]) == []


def test_training_budget_reads_each_trainers_keys():
    infos = {
        "cyclegan": {"steps": 16000, "batch_size": 1, "images_seen": 16000, "train_loop_cpu_s_total": 3600.0},
        "lmidiffusion": {"steps": 7000, "batch_size": 4, "train_loop_cpu_s": 7200.0},
        "cdm": {"steps": {"mrm": 3000, "mdn": 6000}},
        "identity": {},
    }
    rows = {r["method"]: r for r in adequacy.training_budget(infos, ["cyclegan", "lmidiffusion", "cdm", "identity"])}
    assert rows["cyclegan"]["images"] == 16000 and rows["cyclegan"]["cpu_hours"] == pytest.approx(1.0)
    assert rows["lmidiffusion"]["images"] == 28000 and rows["lmidiffusion"]["cpu_hours"] == pytest.approx(2.0)
    assert rows["cdm"]["steps"] == "mrm 3,000, mdn 6,000" and rows["cdm"]["cpu_hours"] is None
    assert "identity" not in rows


def test_the_report_table_shows_every_check_and_a_yes_or_no():
    from lmid.config import load_params
    from lmid.report.tables import adequacy_tables

    baselines, summary = _inputs()
    params = load_params(Path(__file__).resolve().parents[1] / "workflow" / "presets" / "study.yaml")
    d = adequacy_tables(baselines, summary, params)
    cells = [[c["text"] for c in r["cells"]] for r in d["checks"]["rows"]]
    assert len(cells) == 8
    assert cells[1][1:] == ["23.900", "≥ 24", "missed"]
    assert cells[7][1] == "yes"  # t0 bracketed: a word, not a number
