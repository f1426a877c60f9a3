"""pip (pyproject.toml) and conda (environment.yml) users must get the same dependency list."""
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
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in project if d.split(">=")[0] == "snakemake"]
    floor = tuple(int(x) for x in pin.split(">=")[1].split("."))
    assert floor >= (9, 27, 1)
