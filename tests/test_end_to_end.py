"""The whole pipeline on the tiny preset, through the real orchestrators.

- Snakemake twice in fresh folders: byte-identical ``reports/metrics.json`` (determinism). The
  second run goes through a `lmid` that fails its first translation job (a transient fault,
  simulated with a marker file); the workflow's retries must absorb it. When a Slurm cluster is
  up (CI starts one) that run goes through ``--profile slurm``.
- After the Snakemake run: a sampler change plans translation only, a training change training
  (``snakemake -n``); ``dvc_yaml.py --commit`` hands the results to DVC, whose ``dvc status`` then
  agrees on what a sampler change reruns.
- DVC: ``dvc repro`` → ``dvc push`` → fresh ``git clone`` → ``dvc pull`` → ``dvc status`` clean,
  ``dvc repro`` re-runs nothing, metrics identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _env(extra_path: Path | None = None, **extra) -> dict:
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    if extra_path:
        path = f"{extra_path}{os.pathsep}{path}"
    return {**os.environ, "PATH": path, "LMID_GPUS": "0", **extra}


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 1500) -> subprocess.CompletedProcess:
    res = subprocess.run(
        list(map(str, cmd)), cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


def _workdir(tmp: Path) -> Path:
    """A folder laid out like the repository root, with the tiny preset as params.yaml."""
    tmp.mkdir(parents=True)
    shutil.copy(TINY, tmp / "params.yaml")
    return tmp


def _slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return res.returncode == 0 and any(s in res.stdout for s in ("idle", "mixed", "alloc"))


def _project(dest: Path) -> Path:
    """The repository's tracked files in a fresh git repository, with the tiny preset as params.yaml
    and the dvc.yaml generated for it."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("data/", "reports/")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f, follow_symlinks=False)
    (dest / "dvc.lock").unlink(missing_ok=True)
    shutil.copy(TINY, dest / "params.yaml")
    _run([sys.executable, "workflow/scripts/dvc_yaml.py"], dest)
    _run(["git", "init", "-q"], dest)
    _run([*GIT, "add", "-A"], dest)
    _run([*GIT, "commit", "-qm", "tiny"], dest)
    return dest


GIT = ["git", "-c", "user.name=lmid", "-c", "user.email=lmid@example.org"]


@pytest.fixture(scope="module")
def snakemake_run(tmp_path_factory) -> Path:
    """The tiny preset run by Snakemake in a copy of the project (which DVC can then commit)."""
    wd = _project(tmp_path_factory.mktemp("e2e") / "a")
    _run([BIN / "snakemake", "--cores", "2"], cwd=wd)
    return wd


def _planned(wd: Path, *args) -> dict[str, int]:
    """Jobs per rule that `snakemake -n` plans in wd."""
    import re

    out = _run([BIN / "snakemake", "-n", "--cores", "1", "--nocolor", *args], cwd=wd).stdout
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M) if k != "total"}


def test_sampler_change_retranslates_and_a_training_change_retrains(snakemake_run, tmp_path):
    """After a complete run, a sampler key plans translation and scoring only; a training key plans
    training of the methods that read it."""
    wd = snakemake_run
    assert _planned(wd) == {}, "a finished run should plan nothing"
    sampler = tmp_path / "sampler.yaml"
    sampler.write_text("lmidiffusion: {sampler: {steps: 2}}\n")
    plan = _planned(wd, "--configfile", sampler)
    assert "train" not in plan and "generate" not in plan and "prepare" not in plan, plan
    # 3 experiments (pd2t1, t22t1, pd2t1_3t) x 2 shards, LMIDiffusion only.
    assert plan["translate"] == 6 and plan["gather"] == 3 and plan["evaluate"] == 3, plan
    for key in ("stylegan2: {invert_steps: 4}", "cdm: {mdn_ddim_steps: 4}"):  # tiny: 3 and 3
        other = tmp_path / "other.yaml"
        other.write_text(key + "\n")
        plan = _planned(wd, "--configfile", other)
        assert "train" not in plan and plan["translate"] == 6, (key, plan)
    lr = tmp_path / "lr.yaml"
    lr.write_text("diffusion: {train: {lr: 1.0e-3}}\n")
    plan = _planned(wd, "--configfile", lr)
    assert plan["train"] == 2, plan  # lmidiffusion and sdedit, which share the diffusion section
    logs = tmp_path / "logs.yaml"
    logs.write_text("diffusion: {train: {log_every: 2}}\n")
    # Bookkeeping: nothing reruns but the report, whose page lists every parameter.
    assert set(_planned(wd, "--configfile", logs)) <= {"report", "all"}


def test_dvc_commit_after_snakemake_shares_its_results(snakemake_run):
    """The documented way from a Snakemake run to DVC: `dvc_yaml.py --commit`, then `dvc status` is
    clean; a sampler change is then a change of the translation stages only, as in Snakemake."""
    wd = snakemake_run
    _run([sys.executable, "workflow/scripts/dvc_yaml.py", "--commit"], wd)
    status = _run([BIN / "dvc", "status"], wd).stdout
    assert "up to date" in status.lower(), status
    assert _planned(wd) == {}, "after the commit Snakemake must still find nothing to do"
    params = (wd / "params.yaml").read_text()
    try:
        (wd / "params.yaml").write_text(
            params.replace("sampler: {kind: ddim, steps: 3,", "sampler: {kind: ddim, steps: 2,")
        )
        assert (wd / "params.yaml").read_text() != params
        status = _run([BIN / "dvc", "status"], wd).stdout
        changed = {line.rstrip(":") for line in status.splitlines() if line and not line[0].isspace()}
        assert changed, status
        assert not any(name.startswith(("train-", "generate", "prepare")) for name in changed), changed
        assert {f"translate-pd2t1-lmidiffusion-{k}of2" for k in (0, 1)} <= changed, changed
        assert not any("cyclegan" in name for name in changed), changed
    finally:
        (wd / "params.yaml").write_text(params)


def test_report_and_every_method(snakemake_run):
    metrics = json.loads((snakemake_run / "reports/metrics.json").read_text())
    text = json.dumps(metrics)
    for method in ("lmidiffusion", "sdedit", "cyclegan", "stylegan2", "cdm", "identity", "histmatch"):
        assert method in text, method
    # The unseen-protocol experiments ran with the PD → T1 models as they are.
    assert "pd2t1_3t" in metrics and "t22t1_3t" not in metrics  # unseen_protocol.sources: [PD]
    summary = json.loads((snakemake_run / "reports/summary.json").read_text())
    shift = summary["protocol_shift"]["experiments"]["pd2t1"]["methods"]["lmidiffusion"]
    assert shift["pairs"] == summary["experiments"]["pd2t1"]["methods"]["lmidiffusion"]["n"]
    assert shift["change"]["mean"] == pytest.approx(shift["unseen"] - shift["main"], abs=1e-5)
    baselines = json.loads((snakemake_run / "reports/baselines.json").read_text())
    for method in ("stylegan2", "sdedit", "cyclegan"):
        assert baselines["methods"][method]["status"] == "ok", method
    assert baselines["floor"]["w1_to_real"] < baselines["methods"]["stylegan2"]["w1_to_real"]  # 6 steps: untrained
    html = (snakemake_run / "reports/index.html").read_text()
    assert "<table" in html and "data:image/png;base64," in html
    assert 'id="shift-pd2t1"' in html and 'id="table-baselines"' in html and 'id="table-cyclegan"' in html
    nifti = list((snakemake_run / "data/translations/pd2t1/lmidiffusion/nifti").glob("*.nii.gz"))
    assert nifti


def test_rerun_with_a_transient_failure_is_retried_and_deterministic(snakemake_run, tmp_path):
    wd = _workdir(tmp_path / "b")
    fake = tmp_path / "bin"
    fake.mkdir()
    marker = tmp_path / "failed-once"
    (fake / "lmid").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = translate ] && [ ! -e "{marker}" ]; then touch "{marker}"; '
        'echo "simulated transient failure" >&2; exit 1; fi\n'
        f'exec "{sys.executable}" -m lmid "$@"\n'
    )
    (fake / "lmid").chmod(0o755)
    cmd = [BIN / "snakemake", "-s", ROOT / "workflow/Snakefile", "-d", wd, "--cores", "2"]
    if _slurm_up():
        cmd += ["--profile", "slurm"]
    _run(cmd, cwd=ROOT, env=_env(fake))
    assert marker.exists(), "the simulated failure never happened"
    a = (snakemake_run / "reports/metrics.json").read_bytes()
    b = (wd / "reports/metrics.json").read_bytes()
    assert a == b, "the same preset gave different metrics"


def test_dvc_round_trip(tmp_path):
    dvc = BIN / "dvc"
    src = _project(tmp_path / "origin")
    remote = tmp_path / "remote"
    git = GIT
    _run([dvc, "remote", "add", "-d", "-f", "local", remote], src)
    _run([dvc, "repro"], src, timeout=2400)
    _run([dvc, "push"], src)
    _run([*git, "add", "-A"], src)
    _run([*git, "commit", "-qm", "results"], src)
    metrics = (src / "reports/metrics.json").read_bytes()

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", src, clone], tmp_path)
    _run([dvc, "pull"], clone)
    status = _run([dvc, "status"], clone).stdout
    assert "up to date" in status.lower() or not status.strip(), status
    rerun = _run([dvc, "repro"], clone).stdout
    assert "Running stage" not in rerun, rerun
    assert (clone / "reports/metrics.json").read_bytes() == metrics
