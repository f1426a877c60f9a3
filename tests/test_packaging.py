"""pip (pyproject.toml, requirements.lock) and conda (environment.yml) users get the same dependencies."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pip_section(env: dict) -> list[str]:
    for dep in env["dependencies"]:
        if isinstance(dep, dict) and "pip" in dep:
            return [d for d in dep["pip"] if not d.startswith("-e ")]
    raise AssertionError("environment.yml has no pip: section")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert sorted(_pip_section(env)) == sorted(project)


def test_snakemake_pin_excludes_the_releases_that_oversubscribe_cores():
    # Snakemake 9.10-9.27.0 may start more local jobs than --cores once an upstream job of the same
    # run has finished (snakemake/snakemake#3913); a laptop run of the demo would then train
    # several models at once on two cores.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["workflow"]
    (pin,) = [d.split("#")[0].strip() for d in project if d.split(">=")[0] == "snakemake"]
    floor = tuple(int(x) for x in pin.split(">=")[1].split("."))
    assert floor >= (9, 27, 1)


def test_environment_yml_installs_lmid_from_the_project_not_from_a_relative_path():
    """Snakemake copies environment.yml under .snakemake/conda/, where `-e .` would not find lmid;
    its post-deploy script installs lmid from the folder Snakemake runs in."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert not any(str(d).startswith("-e") for d in _pip_section(env))
    script = (ROOT / "environment.post-deploy.sh").read_text()
    assert "pip install --no-deps -e ." in script


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_the_lock_pins_every_dependency_and_extra():
    """requirements.lock (workflow/scripts/lock.sh) pins each direct dependency, runtime and extras,
    at a version its floor in pyproject.toml allows."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock()
    wanted = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    for dep in wanted:
        req = Requirement(dep.split("#")[0].strip())
        if req.name == "lmid":
            continue
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in requirements.lock"
        assert req.specifier.contains(pins[name]), (name, pins[name], str(req.specifier))
    assert "+" not in pins["torch"], "the lock pins torch without a build label (CPU and CUDA builds both match)"


def test_no_unused_or_undefined_names():
    """Pyflakes through ruff (the first step of .ci/run): no unused import, variable or re-export
    left behind, no undefined name, on the whole checkout; and the rule set keeps checking it."""
    import subprocess
    import sys

    select = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]["select"]
    assert "F" in select
    ruff = Path(sys.executable).parent / "ruff"
    res = subprocess.run(
        [str(ruff), "check", "--select", "F", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]
