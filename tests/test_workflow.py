"""The two orchestrators describe one graph: dvc.yaml is generated from the Snakemake rules.

The committed dvc.yaml must equal what workflow/scripts/dvc_yaml.py writes for params.yaml. As an
independent check, Snakemake's own forced dry run (every job with its shell command and outputs)
must list the same commands and outputs as DVC's resolved stages. Log redirections are
Snakemake's only extra.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GENERATOR = ROOT / "workflow" / "scripts" / "dvc_yaml.py"


def _snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # The rules call `lmid`: find it beside this Python, whatever PATH the tests were started with.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _normalise(cmd: str) -> str:
    cmd = re.sub(r"\s*>\s*\S+\s+2>&1\s*$", "", cmd.strip())  # Snakemake's `> {log} 2>&1`
    if cmd.startswith("(") and cmd.endswith(")"):  # a rule that chains commands into one log
        cmd = cmd[1:-1]
    return " ".join(cmd.split()).replace("--params data/params.resolved.yaml", "--params params.yaml")


def snakemake_jobs(cwd: Path = ROOT) -> list[dict]:
    res = _snakemake("--cores", "1", "--dry-run", "--printshellcmds", "--forceall", "--nocolor", cwd=cwd)
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
            for s in repo.index.stages if s.addressing != "dvc-yaml"
        ]


def _generate(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GENERATOR), "--root", str(root), *args], capture_output=True,
                          text=True, timeout=300)


def _project(tmp_path: Path, params: dict) -> Path:
    """A project folder with the repository's workflow and the given params.yaml."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "workflow").symlink_to(ROOT / "workflow")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _present(tree, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


@pytest.fixture(scope="module")
def graphs():
    return snakemake_jobs(), dvc_stages()


def test_committed_dvc_yaml_is_the_generated_one():
    res = _generate(ROOT, "--check")
    assert res.returncode == 0, res.stderr[-3000:]


def test_same_commands(graphs):
    snake, dvc = graphs
    assert all(j["cmd"] for j in snake), [j["rule"] for j in snake if not j["cmd"]]
    assert len(snake) == len(dvc) > 0
    assert sorted(j["cmd"] for j in snake) == sorted(s["cmd"] for s in dvc)


def test_same_outputs(graphs):
    """Each job's outputs equal its stage's outs."""
    snake, dvc = graphs
    by_cmd = {s["cmd"]: s for s in dvc}
    for job in snake:
        assert sorted(job["outputs"]) == sorted(by_cmd[job["cmd"]]["outs"]), job["rule"]


def test_stage_params_are_what_each_step_reads():
    """Training stages list the method's training keys (less bookkeeping), translation stages its
    translation keys only: a sampler change re-translates in DVC as in Snakemake, never retrains."""
    from lmid.config import load_params
    from lmid.registry import METHODS, key_values

    tree = load_params(ROOT / "params.yaml").model_dump(mode="json")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())

    def spelt_out(keys):  # DVC can only track keys that params.yaml writes out
        return [k for k in keys if _present(raw, k)]

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, spec in METHODS.items():
        train = stages[f"train-{name}"].get("params", [])
        assert train == spelt_out(key_values(tree, spec.rerun_train_keys, exclude=spec.bookkeeping_keys)), name
        translate = stages[f"translate-pd2t1-{name}-0of1"].get("params", [])
        assert translate == spelt_out(key_values(tree, spec.translate_keys)), name
    assert "lmidiffusion.sampler" in stages["translate-pd2t1-lmidiffusion-0of1"]["params"]
    assert not any(k.startswith("lmidiffusion") for k in stages["train-lmidiffusion"]["params"])
    assert "diffusion.train.log_every" not in stages["train-lmidiffusion"]["params"]
    assert "stylegan2.invert_steps" not in stages["train-stylegan2"]["params"]
    assert "cdm.mdn_ddim_steps" not in stages["train-cdm"]["params"]


def test_dvc_yaml_for_an_ixi_folder_prepares_that_folder(tmp_path):
    """data.source: ixi → no simulation stage, and prepare reads (and depends on) data.root."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    ixi = tmp_path / "my-ixi"
    ixi.mkdir()
    params["data"].update(source="ixi", root=str(ixi))
    params["unseen_protocol"]["enabled"] = False
    root = _project(tmp_path, params)
    res = _generate(root, "--out", str(tmp_path / "dvc.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    assert "generate" not in stages and "generate-unseen" not in stages
    assert stages["prepare"]["cmd"].startswith(f"lmid prepare --params params.yaml --raw {ixi} ")
    assert str(ixi) in stages["prepare"]["deps"]
    assert not any("_3t" in name for name in stages)


def test_a_graph_change_stops_dvc_until_dvc_yaml_is_regenerated(tmp_path):
    """`dvc exp run -S methods=[...]` changes params.yaml, not dvc.yaml: the first stage says so."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    root = _project(tmp_path, params)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    stamp = tmp_path / "ok"
    assert _generate(root, "--check", "--stamp", str(stamp)).returncode == 0 and stamp.is_file()
    # A value that changes no step of the graph keeps dvc.yaml current.
    params["lmidiffusion"]["sampler"]["steps"] = 7
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _generate(root, "--check").returncode == 0
    params["methods"] = ["identity", "lmidiffusion"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stamp.unlink()
    res = _generate(root, "--check", "--stamp", str(stamp))
    assert res.returncode == 1 and "regenerate it" in res.stderr and not stamp.exists(), res.stderr
    assert "-  train-cdm:" in res.stderr  # the diff names what went away


def test_snakemake_config_overrides_reach_the_commands(tmp_path):
    """--config and a partial --configfile change what `lmid` reads, not only the DAG."""
    params = yaml.safe_load((ROOT / "tests" / "presets" / "tiny.yaml").read_text())
    root = _project(tmp_path, params)
    (root / "more.yaml").write_text("simulate: {n_subjects: 4}\n")
    res = _snakemake("--cores", "1", "--config", "seed=5", "--configfile", "more.yaml", "--", "data/raw", cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    phantom = json.loads((root / "data" / "raw" / "phantom.json").read_text())
    resolved = yaml.safe_load((root / "data" / "params.resolved.yaml").read_text())
    assert resolved["seed"] == 5 and resolved["simulate"]["n_subjects"] == 4
    # A partial configfile is merged over params.yaml, not over the paper-scale defaults.
    assert resolved["diffusion"]["train"]["steps"] == params["diffusion"]["train"]["steps"]
    assert phantom["seed"] == 5 and len(phantom["subjects"]) == 4, phantom


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


def test_every_value_in_a_shell_command_is_quoted():
    """Rules put paths and parameters into shell commands only as {x:q} (shlex.quote): a folder
    named with spaces, quotes or $(...) stays one word (tests/test_bad_input.py runs one)."""
    field = re.compile(r"\{([A-Za-z_][\w.]*)(:[^}]*)?\}")
    unquoted = []
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        in_shell = False
        for number, line in enumerate(smk.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped == "shell:":
                in_shell = True
                continue
            if in_shell and not stripped.startswith('"'):
                in_shell = False
            if in_shell:
                unquoted += [f"{smk.name}:{number}: {{{m.group(1)}{m.group(2) or ''}}}"
                             for m in field.finditer(stripped) if m.group(2) != ":q"]
    assert not unquoted, unquoted


def test_code_comments_of_the_rules_name_real_functions():
    """Each rule's ``# Code: lmid <cmd>: <file>:<cli function> -> <module>.<function>`` resolves: the
    sub-command exists, the CLI function is defined in that file and calls the package function."""
    import ast
    import importlib
    import re

    from lmid.cli import build_parser

    pattern = re.compile(r"# Code: lmid ([\w-]+): (lmid/[\w/]+\.py):(\w+) -> ([\w.]+)\.(\w+)")
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    seen = 0
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for line in smk.read_text(encoding="utf-8").splitlines():
            if "# Code:" not in line:
                continue
            m = pattern.search(line)
            assert m, f"{smk.name}: unreadable Code comment {line.strip()!r}"
            command, path, cli_fn, module, fn = m.groups()
            assert command in commands, f"{smk.name}: no 'lmid {command}'"
            tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
            defs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert cli_fn in defs, f"{smk.name}: {path} defines no {cli_fn}"
            called = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None)
                      for n in ast.walk(defs[cli_fn]) if isinstance(n, ast.Call)}
            assert fn in called, f"{smk.name}: {path}:{cli_fn} does not call {fn}"
            assert callable(getattr(importlib.import_module(module), fn, None)), f"{smk.name}: no {module}.{fn}"
            seen += 1
    assert seen >= 12
