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
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


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
            {"name": s.addressing, "cmd": _normalise(s.cmd), "outs": [str(Path(o.def_path)) for o in s.outs]}
            for s in repo.index.stages
            if s.addressing != "dvc-yaml"
        ]


def _generate(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(GENERATOR), "--root", str(root), *args], capture_output=True, text=True, timeout=300
    )


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


def test_each_protocol_is_made_by_the_same_two_rules(graphs):
    """generate and prepare are one rule each, for the main and the unseen protocol alike: the
    unseen protocol's folders are the main ones' with its suffix, and its stages are named after it."""
    snake, _ = graphs
    by_output = {o: j for j in snake for o in j["outputs"]}
    assert by_output["data/raw"]["rule"] == by_output["data/raw_3t"]["rule"] == "generate"
    assert by_output["data/slices/test.npz"]["rule"] == by_output["data/slices_3t/test.npz"]["rule"] == "prepare"
    assert by_output["data/raw"]["cmd"] == by_output["data/raw_3t"]["cmd"].replace(
        "--protocol unseen --out data/raw_3t", "--protocol main --out data/raw"
    )
    assert by_output["data/slices_3t/test.npz"]["cmd"] == by_output["data/slices/test.npz"]["cmd"].replace(
        "data/raw", "data/raw_3t"
    ).replace("data/slices", "data/slices_3t")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {"generate", "generate-3t", "prepare", "prepare-3t"} <= set(stages)
    assert stages["generate-3t"]["outs"] == ["data/raw_3t"]
    assert "unseen_protocol.name" in stages["generate-3t"]["params"]
    assert not any(k.startswith("unseen_protocol") for k in stages["generate"]["params"])


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
    assert "generate" not in stages and "generate-3t" not in stages and "prepare-3t" not in stages
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
    assert committed == json.loads(json.dumps(json_schema())), (
        "regenerate with: lmid schema --out workflow/schemas/params.schema.json"
    )


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _leaf_keys(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


@pytest.mark.parametrize("path", ["params.yaml", "workflow/presets/paper.yaml", "workflow/presets/study.yaml"])
def test_complete_params_files_write_out_every_parameter(path):
    """DVC sees the keys a params file spells out, nothing else: a default of lmid/config.py left
    out of params.yaml or a preset could change unseen. Every leaf of lmid.config.Params is there."""
    from lmid.config import Params

    written = _leaf_keys(yaml.safe_load((ROOT / path).read_text()))
    missing = sorted(_leaf_keys(Params().model_dump(mode="json")) - written)
    assert not missing, f"{path} leaves out {len(missing)} key(s): {missing}"


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
    # generate and prepare once for each protocol (the main one and the unseen one).
    assert planned.get("generate") == planned.get("prepare") == "2", res.stdout[-2000:]
    assert planned.get("report") == "1", res.stdout[-2000:]


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
                unquoted += [
                    f"{smk.name}:{number}: {{{m.group(1)}{m.group(2) or ''}}}"
                    for m in field.finditer(stripped)
                    if m.group(2) != ":q"
                ]
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
            called = {
                n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None)
                for n in ast.walk(defs[cli_fn])
                if isinstance(n, ast.Call)
            }
            assert fn in called, f"{smk.name}: {path}:{cli_fn} does not call {fn}"
            assert callable(getattr(importlib.import_module(module), fn, None)), f"{smk.name}: no {module}.{fn}"
            seen += 1
    assert seen >= 12


def test_commit_refuses_outputs_that_do_not_follow_from_their_inputs(tmp_path):
    """`dvc_yaml.py --commit` records what is on disk in DVC. It checks by content, from what
    Snakemake recorded of each job, that every output was made from the inputs beside it: a
    segmenter fitted on slices that were prepared again since (its file time made newer, so that
    Snakemake sees nothing to do), and a report file Snakemake never made (as from git), are refused
    before anything is committed."""
    import time

    params = yaml.safe_load((ROOT / "tests" / "presets" / "tiny.yaml").read_text())
    root = _project(tmp_path, params)
    res = _snakemake("--cores", "1", "--", "data/models/kmeans.json", cwd=root)  # generate, prepare, fit
    assert res.returncode == 0, res.stderr[-3000:]
    assert _generate(root).returncode == 0
    # Everything made so far follows from its inputs: the check passes, the unfinished run stops it.
    res = _generate(root, "--commit")
    assert res.returncode == 1 and "jobs left to run" in res.stderr and "Not committing" not in res.stderr, res.stderr

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run(
        [
            str(BIN / "lmid"),
            "prepare",
            "--params",
            "params.yaml",
            "--set",
            "seed=99",
            "--raw",
            "data/raw",
            "--out",
            "data/slices",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # The segmenter (with its log and benchmark) now looks newer than the slices: by file times it
    # is up to date.
    later = time.time() + 60
    for path in (root / "data").rglob("*"):
        if path.is_file() and "fit_segmenter" in str(path) or path.name == "kmeans.json":
            os.utime(path, (later, later))
    res = _snakemake("--cores", "1", "--dry-run", "--", "data/models/kmeans.json", cwd=root)
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr, res.stdout[-2000:]
    (root / "reports").mkdir()
    (root / "reports" / "metrics.json").write_text("{}\n")

    res = _generate(root, "--commit")
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Not committing" in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert any("data/models/kmeans.json" in line and "data/slices/train.npz" in line for line in lines), res.stderr
    assert any(line.strip().startswith("reports/metrics.json:") and "no record" in line for line in lines), res.stderr
    assert not (root / ".dvc").exists() and not (root / "data" / "dvc_yaml.ok").exists()


def _dvc_yaml_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dvc_yaml", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stages_depend_on_the_code_their_commands_import():
    """Code dependencies come from the imports of each command, not from a list kept by hand:
    the defaults in lmid/config.py and the shared I/O reach every stage, the K-Means module every
    stage that imports it, and a method's own code only the stages that run that method."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if name == "dvc-yaml":
            continue
        for f in ("lmid/config.py", "lmid/io.py", "lmid/cli/__init__.py", "lmid/registry.py"):
            assert f in stage["deps"], (name, f)
    for name in ("diagnose", "prepare", "report", "fit-segmenter", "evaluate-pd2t1-cdm"):
        assert "lmid/evaluation/segment.py" in stages[name]["deps"], name
    assert "lmid/checkpoint.py" in stages["train-cdm"]["deps"]
    assert "lmid/report/templates/report.html.j2" in stages["report"]["deps"]
    assert "lmid/methods/cdm.py" in stages["train-cdm"]["deps"]
    assert "lmid/diffusion/trainer.py" in stages["train-lmidiffusion"]["deps"]
    train_identity = stages["train-identity"]["deps"]
    assert not any(f.startswith(("lmid/diffusion/", "lmid/methods/cdm", "lmid/networks/")) for f in train_identity), (
        train_identity
    )
    # The graph check reruns whenever a file that some stage runs changes.
    every = {f for name, s in stages.items() if name != "dvc-yaml" for f in s["deps"] if f.startswith("lmid/")}
    assert every <= set(stages["dvc-yaml"]["deps"])


#: Runs `lmid ARGS`, then writes the files of the lmid modules Python loaded to OUT.
_LOADED = """
import atexit, json, sys
def dump(out=sys.argv[1]):
    files = sorted({m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] == "lmid" and getattr(m, "__file__", None)})
    json.dump(files, open(out, "w"))
atexit.register(dump)
from lmid.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_code_deps_cover_every_module_a_command_loads(tiny_data, tmp_path):
    """What the import walk finds holds every lmid module that the command really loads."""
    import shlex

    gen = _dvc_yaml_module()
    tiny = ROOT / "tests" / "presets" / "tiny.yaml"
    model = tmp_path / "models" / "identity"
    commands = [
        [
            "train",
            "--params",
            tiny,
            "--method",
            "identity",
            "--train",
            tiny_data / "train.npz",
            "--val",
            tiny_data / "val.npz",
            "--out",
            model,
        ],
        [
            "translate",
            "--params",
            tiny,
            "--method",
            "identity",
            "--model",
            model / "model.pt",
            "--slices",
            tiny_data / "test.npz",
            "--out",
            tmp_path / "shard.npz",
        ],
        ["fit-segmenter", "--params", tiny, "--train", tiny_data / "train.npz", "--out", tmp_path / "kmeans.json"],
    ]
    for k, args in enumerate(commands):
        args = list(map(str, args))
        loaded = tmp_path / f"loaded-{k}.json"
        res = subprocess.run(
            [sys.executable, "-c", _LOADED, str(loaded), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        assert res.returncode == 0, res.stderr[-3000:]
        used = {str(Path(f).resolve().relative_to(ROOT)) for f in json.loads(loaded.read_text())}
        found = set(gen.command_code(ROOT, shlex.join(["lmid", *args])))
        assert used <= found, (args[0], sorted(used - found))
