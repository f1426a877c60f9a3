"""The two orchestrators describe one graph: same steps, same commands, same outputs.

Snakemake's side comes from a forced dry run (every job with its shell command and outputs);
DVC's from its resolved stages. Log redirections are Snakemake's only extra.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _snakemake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _normalise(cmd: str) -> str:
    cmd = re.sub(r"\s*>\s*\S+\s+2>&1\s*$", "", cmd.strip())  # Snakemake's `> {log} 2>&1`
    return " ".join(cmd.split())


def snakemake_jobs() -> list[dict]:
    res = _snakemake("--cores", "1", "--dry-run", "--printshellcmds", "--forceall", "--nocolor")
    assert res.returncode == 0, res.stderr + res.stdout
    jobs, job = [], None
    for line in res.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            job = {"rule": m.group(1), "outputs": [], "cmd": None}
            jobs.append(job)
        elif job is not None and line.strip().startswith("output:"):
            job["outputs"] = [o.strip() for o in line.split(":", 1)[1].split(",")]
        elif job is not None and line.startswith("Shell command:"):
            job["cmd"] = _normalise(line.split(":", 1)[1])
    return [j for j in jobs if j["rule"] != "all"]


def dvc_stages() -> list[dict]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return [
            {"name": s.addressing, "cmd": _normalise(s.cmd),
             "outs": [str(Path(o.def_path)) for o in s.outs]}
            for s in repo.index.stages
        ]


def _step(name: str) -> str:
    """train-cdm -> train, translate@cdm-experiment0-1 -> translate, fit_segmenter -> fit-segmenter."""
    name = name.split("@")[0].replace("_", "-")
    return "train" if name.startswith("train-") else name


@pytest.fixture(scope="module")
def graphs():
    return snakemake_jobs(), dvc_stages()


def test_same_steps(graphs):
    snake, dvc = graphs
    assert Counter(_step(j["rule"]) for j in snake) == Counter(_step(s["name"]) for s in dvc)


def test_same_commands(graphs):
    snake, dvc = graphs
    assert all(j["cmd"] for j in snake), [j["rule"] for j in snake if not j["cmd"]]
    assert sorted(j["cmd"] for j in snake) == sorted(s["cmd"] for s in dvc)


def test_same_outputs(graphs):
    """Each job's outputs equal its stage's outs (a DVC folder out may stand for files inside it)."""
    snake, dvc = graphs
    by_cmd = {s["cmd"]: s for s in dvc}
    for job in snake:
        outs = by_cmd[job["cmd"]]["outs"]
        for o in job["outputs"]:
            assert any(o == d or o.startswith(d.rstrip("/") + "/") for d in outs), (job["rule"], o, outs)
        for d in outs:
            assert any(o == d or o.startswith(d.rstrip("/") + "/") for o in job["outputs"]), (job["rule"], d)


def test_dvc_stage_params_match_snakemake_rerun_params():
    """A training stage lists exactly the params sections its method's training reads."""
    import yaml

    from lmid.methods import TRAIN_PARAM_SECTIONS

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for method, sections in TRAIN_PARAM_SECTIONS.items():
        assert sorted(stages[f"train-{method}"]["params"]) == sorted(["seed", *sections]), method


def test_snakemake_lint_is_clean():
    res = _snakemake("--lint", "--nocolor")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations, your workflow is in a good condition" in res.stdout + res.stderr, res.stdout


def test_params_schema_is_current():
    """workflow/schemas/params.schema.json is generated from lmid.config (run `lmid schema`)."""
    from lmid.config import json_schema

    committed = json.loads((ROOT / "workflow/schemas/params.schema.json").read_text())
    assert committed == json.loads(json.dumps(json_schema())), "regenerate with: lmid schema --out workflow/schemas/params.schema.json"


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _leaf_keys(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


@pytest.mark.parametrize("preset", ["paper", "study"])
def test_presets_are_complete_and_valid(preset):
    """A preset is a whole params file (Snakemake --configfile and `dvc` both read one): it sets
    every key, so no default of lmid/config.py (the paper's values) fills a gap silently."""
    import yaml

    from lmid.config import Params, load_params

    path = ROOT / f"workflow/presets/{preset}.yaml"
    tree = yaml.safe_load(path.read_text())
    assert _leaf_keys(tree) == _leaf_keys(Params().model_dump(mode="json"))
    p = load_params(path)
    assert p.preset == preset
    assert (p.prepare.slices.train, p.prepare.slices.test) == (300, 75)
    # Each preset writes under its own folders, so it never overwrites the demo's report.
    assert p.paths.data != "data" and p.paths.reports != "reports"
    assert p.data.root.startswith(p.paths.data + "/")
    if preset == "paper":
        assert p.prepare.size == 128
        assert p.lmidiffusion.sampler.kind == "ancestral" and p.lmidiffusion.sampler.steps == 1000
        assert p.diffusion.unet.channels == (64, 128, 128, 128)
    else:
        assert p.prepare.size == 64 and p.diffusion.train.snapshot_every > 0


def test_slurm_profile_resolves_from_root():
    res = _snakemake("--profile", "slurm", "--dry-run", "--cores", "1", "--forceall", "--nocolor")
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = (ROOT / "slurm" / "config.yaml").read_text()
    assert "executor: slurm" in cfg


def test_fresh_copy_without_data_runs_everything(tmp_path):
    """A copy with the committed demo report but no data/ (an archive, a clone whose checkout gave
    every file one timestamp) must plan the whole pipeline, not report "nothing to be done"."""
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    shutil.copytree(ROOT / "reports", tmp_path / "reports")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for path in tmp_path.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    res = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "1", "--dry-run", "--nocolor"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", res.stdout, flags=re.M))
    assert planned.get("generate") == "1" and planned.get("report") == "1", res.stdout[-2000:]
