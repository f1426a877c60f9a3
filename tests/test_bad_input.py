"""Bad input, case by case, through the real command line.

Every case must end with exit status 2, one message that names the offending file or key and the
problem, and no output left behind (writers are atomic).
"""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from conftest import TINY, run_lmid
from volumes import SHAPE, grid, image, ixi_folder, params_file, save

from lmid.errors import InputFileError
from lmid.data.slices import SliceSet, load_slices


# ------------------------------------------------------------------------------- IXI folders
def _prepare_case(tmp: Path, mutate) -> tuple[list, list[str], Path]:
    raw = ixi_folder(tmp / "raw", n=5)
    needle = mutate(raw)
    params = params_file(
        tmp,
        **{
            "data.source": "ixi",
            "data.registration": False,
            "prepare.slices": {"train": 4, "val": 1, "test": 1},
            "prepare.brain_mask": "head",
        },
    )
    out = tmp / "slices"
    return ["prepare", "--params", params, "--raw", raw, "--out", out], needle, out


def _corrupt(raw):
    f = raw / "IXI003-Guys-0801-PD.nii.gz"
    f.write_bytes(b"\x1f\x8b\x08\x00garbage" * 20)
    return [f.name]


def _truncated(raw):
    f = raw / "IXI003-Guys-0801-T1.nii.gz"
    f.write_bytes(f.read_bytes()[:200])
    return [f.name]


def _replace(raw, name, data):
    save(raw / name, data, grid())
    return [name]


def _volume(mod: str) -> np.ndarray:
    return image(mod, SHAPE, grid(), seed=0)


def _two_d(raw):
    return _replace(raw, "IXI004-Guys-0802-PD.nii.gz", _volume("PD")[:, :, 5]) + ["3-D"]


def _four_d(raw):
    return _replace(raw, "IXI004-Guys-0802-PD.nii.gz", np.stack([_volume("PD")] * 2, axis=-1)) + ["3-D"]


def _nan(raw):
    v = _volume("T1")
    v[3, 3, 3] = np.nan
    return _replace(raw, "IXI005-Guys-0803-T1.nii.gz", v) + ["NaN"]


def _zeros(raw):
    return _replace(raw, "IXI005-Guys-0803-T1.nii.gz", np.zeros(SHAPE, np.float32)) + ["zero"]


def _set_pixdim(raw, value):
    """A PD volume whose header stores voxel size ``value`` along x, orientation kept (the sform):
    nibabel would load it with |value| or 1 mm and a logged warning only."""
    f = raw / "IXI004-Guys-0802-PD.nii.gz"
    payload = bytearray(gzip.decompress(f.read_bytes()))
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(payload)), check=False)
    header["pixdim"][1] = value
    payload[:348] = header.binaryblock
    f.write_bytes(gzip.compress(bytes(payload)))
    return [f.name, "voxel sizes"]


def _no_complete_subject(raw):
    for f in raw.glob("*-T1.nii.gz"):
        f.unlink()
    return [str(raw.name), "T1"]


def _unparseable(raw):
    for f in raw.iterdir():
        f.rename(raw / f.name.replace("IXI", "subject_"))
    return [str(raw.name)]


PREPARE_CASES = {
    "corrupt-nifti": _corrupt,
    "truncated-nifti": _truncated,
    "2d-volume": _two_d,
    "4d-volume": _four_d,
    "nan-voxels": _nan,
    "all-zero-volume": _zeros,
    "negative-voxel-size": lambda raw: _set_pixdim(raw, -2.0),
    "zero-voxel-size": lambda raw: _set_pixdim(raw, 0.0),
    "no-subject-has-every-modality": _no_complete_subject,
    "ixi-names-do-not-parse": _unparseable,
}


@pytest.mark.parametrize("case", sorted(PREPARE_CASES))
def test_prepare_rejects(tmp_path, case):
    args, needles, out = _prepare_case(tmp_path, PREPARE_CASES[case])
    res = run_lmid(*args)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


# ------------------------------------------------------------------------------- parameters
PARAM_CASES = {
    "misspelt-key": ({"diffusion.train.stepz": 5}, "diffusion.train.stepz"),
    "wrong-type": ({"diffusion.train.steps": "many"}, "diffusion.train.steps"),
    "negative-steps": ({"diffusion.train.steps": -3}, "diffusion.train.steps"),
    "fraction-above-one": ({"cyclegan.source_fraction": 1.5}, "cyclegan.source_fraction"),
    "unknown-method": ({"methods": ["lmidiffusion", "pix2pix"]}, "methods"),
    "data-folder-is-root": ({"paths.data": "/"}, "paths.data"),
    "data-folder-is-here": ({"paths.data": "."}, "paths.data"),
    "data-folder-above-here": ({"paths.data": ".."}, "paths.data"),
    "reports-folder-with-newline": ({"paths.reports": "rep\nx"}, "paths.reports"),
    "raw-folder-with-nul": ({"data.root": "data/raw\x00x"}, "data.root"),
    "extra-modality-is-the-target": ({"data.extra_modalities": ["T1"]}, "extra_modalities: 'T1' is already the"),
    "extra-modality-twice": ({"data.extra_modalities": ["T2", "t2"]}, "extra_modalities: 't2' is listed twice"),
    # Modality names compare without case, in one validator of DataParams.
    "extra-modality-is-the-target-in-lower-case": (
        {"data.extra_modalities": ["t1"]},
        "extra_modalities: 't1' is already the source or the target modality",
    ),
    "source-is-the-target": ({"data.source_modality": "t1"}, "source_modality and target_modality are both 't1'"),
    "simulated-raw-outside-data-folder": (
        {"paths.data": "/tmp/elsewhere"},
        "data.root 'data/raw' must be a folder inside paths.data '/tmp/elsewhere'",
    ),
}


@pytest.mark.parametrize("case", sorted(PARAM_CASES))
def test_params_rejected_at_start(tmp_path, case):
    overrides, key = PARAM_CASES[case]
    params = params_file(tmp_path, **overrides)
    out = tmp_path / "raw"
    res = run_lmid("generate", "--params", params, "--out", out)
    assert res.returncode == 2, res.stderr
    assert key in res.stderr and str(params) in res.stderr, res.stderr
    assert not out.exists()


@pytest.mark.parametrize("case", ["slash", "elsewhere"])
def test_snakemake_refuses_misplaced_data_folders_before_writing_anything(tmp_path, case):
    """`--config paths={data: /}` would write /params.resolved.yaml before any job ran; with
    `paths.data` elsewhere and `data.root` left at data/raw, the run would replace the project's
    own data/raw."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    if case == "slash":
        config, words, resolved = (
            "paths={data: /, reports: reports}",
            ("paths.data", "filesystem root"),
            Path("/params.resolved.yaml"),
        )
    else:
        elsewhere = tmp_path / "elsewhere"
        config, resolved = (
            f"paths={{data: {elsewhere}, reports: {tmp_path / 'rep'}}}",
            elsewhere / "params.resolved.yaml",
        )
        words = ("data.root 'data/raw'", f"paths.data '{elsewhere}'")
    if resolved.exists():
        pytest.skip(f"{resolved} exists already: cannot tell whether this run wrote it")
    (tmp_path / "workflow").symlink_to(ROOT / "workflow")
    shutil.copy(TINY, tmp_path / "params.yaml")
    bin_dir = Path(sys.executable).parent
    res = subprocess.run(
        [str(bin_dir / "snakemake"), "-n", "--cores", "1", "--config", config],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert res.returncode != 0, res.stdout[-2000:]
    for w in words:
        assert w in res.stderr + res.stdout, (w, res.stderr[-2000:])
    assert not resolved.exists()
    assert {p.name for p in tmp_path.iterdir()} <= {".snakemake", "params.yaml", "workflow"}, sorted(tmp_path.iterdir())


# ----------------------------------------------------------------- slices, checkpoints, outputs
def _slices(path: Path, n=3, size=16, **change) -> Path:
    rng = np.random.default_rng(0)
    arrays = dict(
        source=rng.random((n, size, size), np.float32),
        target=rng.random((n, size, size), np.float32),
        mask=np.ones((n, size, size), bool),
        label=np.zeros((n, size, size), np.uint8),
        subject=np.array([f"IXI00{i}" for i in range(n)]),
        slice_index=np.arange(n),
    )
    arrays.update(change)
    SliceSet(**arrays).save(path) if not change else np.savez(path, **arrays)
    return path


def test_slice_file_with_wrong_shape(tmp_path):
    bad = _slices(tmp_path / "test.npz", source=np.zeros((3, 16), np.float32))
    out = tmp_path / "out.npz"
    res = run_lmid("translate", "--params", TINY, "--method", "identity", "--slices", bad, "--out", out)
    assert res.returncode == 2 and "test.npz" in res.stderr and "shape" in res.stderr, res.stderr
    assert not out.exists()


def test_slice_file_with_wrong_dtype(tmp_path):
    bad = _slices(tmp_path / "test.npz", source=np.zeros((3, 16, 16), np.int64))
    out = tmp_path / "out.npz"
    res = run_lmid("translate", "--params", TINY, "--method", "identity", "--slices", bad, "--out", out)
    assert res.returncode == 2 and "test.npz" in res.stderr and "floating" in res.stderr, res.stderr
    assert not out.exists()


def test_empty_test_split(tmp_path):
    empty = _slices(tmp_path / "test.npz", n=0)
    out = tmp_path / "out.npz"
    res = run_lmid("translate", "--params", TINY, "--method", "identity", "--slices", empty, "--out", out)
    assert res.returncode == 2 and "test.npz" in res.stderr and "no slices" in res.stderr, res.stderr
    assert not out.exists()


def test_output_folder_not_writable(tmp_path):
    slices = _slices(tmp_path / "test.npz")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    out = blocker / "sub" / "out.npz"
    res = run_lmid("translate", "--params", TINY, "--method", "identity", "--slices", slices, "--out", out)
    assert res.returncode == 2 and "blocker" in res.stderr, res.stderr


@pytest.mark.parametrize("case", ["truncated", "not-a-checkpoint", "other-architecture"])
def test_bad_checkpoint(tmp_path, tiny_data, case):
    model_dir = tmp_path / "model"
    res = run_lmid(
        "train",
        "--params",
        TINY,
        "--method",
        "lmidiffusion",
        "--train",
        tiny_data / "train.npz",
        "--val",
        tiny_data / "val.npz",
        "--out",
        model_dir,
        "--set",
        "diffusion.train.steps=1",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = model_dir / "model.pt"
    extra = []
    if case == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif case == "not-a-checkpoint":
        ckpt.write_text("this is a text file, not weights")
    else:  # weights of one architecture under the description of another
        import torch

        state = torch.load(ckpt, weights_only=True)
        state["unet"] = {**state["unet"], "channels": [32, 32, 64], "norm_num_groups": 16, "num_head_channels": 32}
        torch.save(state, ckpt)
    out = tmp_path / "shard.npz"
    res = run_lmid(
        "translate",
        "--params",
        TINY,
        "--method",
        "lmidiffusion",
        "--model",
        ckpt,
        "--slices",
        tiny_data / "test.npz",
        "--out",
        out,
        "--limit",
        "1",
        *extra,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert "model.pt" in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert not out.exists()


def test_slices_loader_names_the_file(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputFileError) as info:
        load_slices(path)
    assert "broken.npz" in str(info.value)


# ------------------------------------------------------------------ hostile folder names
#: Shell syntax that would run `touch INJECTED` if any path reached a shell unquoted, with a space,
#: both quote characters and a non-ASCII letter besides.
HOSTILE_DIR = "pro ject 'q\" ;$(touch INJECTED) é"
HOSTILE_DATA = "out é $(touch INJECTED) `touch INJECTED`"


def _copy_of_repository(dest: Path) -> Path:
    """The tracked files of this checkout (less the committed reports and data) under ``dest``."""
    import subprocess

    from conftest import ROOT

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in files.splitlines():
        if name.startswith(("reports/", "data/")):
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name, follow_symlinks=False)
    return dest


def test_workflow_quotes_every_path_it_puts_into_a_command(tmp_path):
    """A project in a folder named with shell syntax, and params whose folders hold `$(...)`,
    backticks and `;`: Snakemake and `dvc repro` run the real jobs, nothing is injected, and every
    output lands where the parameters say."""
    import os
    import shlex
    import subprocess
    import sys

    root = _copy_of_repository(tmp_path / HOSTILE_DIR / "repo")
    tree = yaml.safe_load(TINY.read_text())
    raw = f"{HOSTILE_DATA}/raw;touch INJECTED;#"
    tree["paths"] = {"data": HOSTILE_DATA, "reports": "rep $(touch INJECTED)"}
    tree["data"]["root"] = raw
    (root / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}

    def run(*cmd):
        res = subprocess.run(list(cmd), cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (cmd, res.stdout[-3000:], res.stderr[-3000:])
        return res

    # Snakemake: simulate, prepare, train, translate (2 shards), gather, fit the segmenter, score.
    scores = root / HOSTILE_DATA / "metrics" / "pd2t1" / "identity.csv"
    run(str(bin_dir / "snakemake"), "--cores", "1", "--nocolor", "--", str(scores.relative_to(root)))
    assert not list(tmp_path.rglob("INJECTED*")), "a path reached the shell unquoted"
    assert (root / raw / "phantom.json").is_file()
    assert (root / HOSTILE_DATA / "params.resolved.yaml").is_file()
    assert all((root / HOSTILE_DATA / "slices" / f).is_file() for f in ("train.npz", "val.npz", "test.npz"))
    assert scores.is_file() and len(scores.read_text().splitlines()) == 1 + tree["prepare"]["slices"]["test"]

    # DVC: the generated commands hold every path as one quoted word, and dvc repro runs them.
    run(sys.executable, "workflow/scripts/dvc_yaml.py")
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    argv = shlex.split(stages["prepare"]["cmd"])
    assert argv[argv.index("--raw") + 1] == raw and argv[argv.index("--out") + 1] == f"{HOSTILE_DATA}/slices"
    argv = shlex.split(stages["evaluate-pd2t1-identity"]["cmd"])
    assert argv[argv.index("--out") + 1] == str(scores.relative_to(root))
    run("dvc", "config", "core.no_scm", "true")
    run("dvc", "repro", "--force", "prepare")
    assert not list(tmp_path.rglob("INJECTED*")), "dvc repro ran a path through the shell unquoted"
    assert (root / raw / "phantom.json").is_file() and (root / HOSTILE_DATA / "slices" / "test.npz").is_file()
