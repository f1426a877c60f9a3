"""The whole pipeline on the tiny preset, through the real orchestrators.

- Snakemake twice in fresh folders: byte-identical ``reports/metrics.json`` (determinism). The
  second run goes through a `lmid` that fails its first translation job (a transient fault,
  simulated with a marker file); the workflow's retries must absorb it. When a Slurm cluster is
  up (CI starts one) that run goes through ``--profile slurm``.
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
    res = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)
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


@pytest.fixture(scope="module")
def snakemake_run(tmp_path_factory) -> Path:
    wd = _workdir(tmp_path_factory.mktemp("e2e") / "a")
    _run([BIN / "snakemake", "-s", ROOT / "workflow/Snakefile", "-d", wd, "--cores", "2"], cwd=ROOT)
    return wd


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
    src = tmp_path / "origin"
    remote = tmp_path / "remote"
    # The repository's tracked files, with the tiny preset as params.yaml.
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("data/", "reports/")):
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f, follow_symlinks=False)
    (src / "dvc.lock").unlink(missing_ok=True)
    shutil.copy(TINY, src / "params.yaml")
    git = ["git", "-c", "user.name=lmid", "-c", "user.email=lmid@example.org"]
    _run(["git", "init", "-q"], src)
    _run([dvc, "remote", "add", "-d", "-f", "local", remote], src)
    _run([*git, "add", "-A"], src)
    _run([*git, "commit", "-qm", "tiny"], src)
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
