"""No silent wrong results: interrupted steps, mismatched inputs and loose parameters.

Each case goes through the real CLI where it can: exit status 2, one line that names the file or
parameter and the problem, no traceback, and nothing half-written left behind. Interruptions are
simulated in-process (a KeyboardInterrupt at the worst moment), which is what Ctrl-C raises.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, run_lmid
from volumes import params_file


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _fails_cleanly(res, *words: str) -> str:
    """Exit 2, one `lmid ...: error:` line, no traceback; returns the message."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if ": error:" in line]
    assert len(errors) == 1, res.stderr[-2000:]
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


def _params(tmp_path: Path, text: str | None = None, **changes) -> Path:
    """params.yaml holding ``text``, or the tiny preset with ``a__b=value`` changes (keywords hold no dots)."""
    if text is None:
        return params_file(tmp_path, **{key.replace("__", "."): value for key, value in changes.items()})
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ outputs appear together
def test_interrupted_prepare_leaves_the_previous_splits_untouched(tiny_data, tmp_path, monkeypatch):
    from lmid.config import load_params
    from lmid.data import prepare as prep
    from lmid.data.slices import SliceSet

    out = tmp_path / "slices"
    shutil.copytree(tiny_data, out)
    before = _digests(out)
    calls = {"n": 0}
    real_save = SliceSet.save

    def save_then_interrupt(self, path):
        calls["n"] += 1
        if calls["n"] == 2:  # train.npz written, val.npz not yet: Ctrl-C
            raise KeyboardInterrupt
        real_save(self, path)

    monkeypatch.setattr(SliceSet, "save", save_then_interrupt)
    params = load_params(TINY, {"seed": 99})  # another split of the subjects
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(params, tiny_data.parent / "raw", out)
    assert _digests(out) == before, "an interrupted prepare changed the existing splits"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slices"], "staging folder left behind"


def test_interrupted_generate_keeps_volumes_and_phantom_json_together(tiny_data, tmp_path, monkeypatch):
    from lmid.config import load_params
    from lmid.data import phantom

    raw = tmp_path / "raw"
    shutil.copytree(tiny_data.parent / "raw", raw)
    before = _digests(raw)
    calls = {"n": 0}
    real_save = phantom.save_volume

    def save_then_interrupt(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        real_save(path, *args, **kwargs)

    monkeypatch.setattr(phantom, "save_volume", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        phantom.generate(load_params(TINY, {"simulate": {"snr": 12.0}}), raw)
    assert _digests(raw) == before, "volumes of the new snr were mixed into the old folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_prepare_refuses_a_simulated_folder_without_phantom_json(tiny_data, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_data.parent / "raw", raw)
    (raw / "phantom.json").unlink()
    res = run_lmid("prepare", "--params", TINY, "--raw", raw, "--out", tmp_path / "slices")
    _fails_cleanly(res, "phantom.json", "incomplete")
    assert not (tmp_path / "slices").exists()


def test_out_folder_with_foreign_files_is_refused_not_emptied(tiny_data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    res = run_lmid("prepare", "--params", TINY, "--raw", tiny_data.parent / "raw", "--out", out)
    _fails_cleanly(res, str(out), "notes.txt")
    assert (out / "notes.txt").read_text() == "my notes" and len(list(out.iterdir())) == 1


# ------------------------------------------------------------------ consumers check inputs
@pytest.fixture(scope="module")
def identity_shards(tiny_data, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shards")
    assert (
        run_lmid(
            "train",
            "--params",
            TINY,
            "--method",
            "identity",
            "--train",
            tiny_data / "train.npz",
            "--val",
            tiny_data / "val.npz",
            "--out",
            d / "identity",
        ).returncode
        == 0
    )
    for k in (0, 1):
        res = run_lmid(
            "translate",
            "--params",
            TINY,
            "--method",
            "identity",
            "--model",
            d / "identity/model.pt",
            "--slices",
            tiny_data / "test.npz",
            "--shard",
            k,
            "--num-shards",
            2,
            "--out",
            d / f"shard-{k}-of-2.npz",
        )
        assert res.returncode == 0, res.stderr[-2000:]
    assert (
        run_lmid(
            "fit-segmenter", "--params", TINY, "--train", tiny_data / "train.npz", "--out", d / "kmeans.json"
        ).returncode
        == 0
    )
    return d


def _gather(tiny_data, shards, out, method="identity", slices="test.npz"):
    return run_lmid(
        "gather",
        "--method",
        method,
        "--shards",
        *shards,
        "--slices",
        tiny_data / slices,
        "--manifest",
        tiny_data / "manifest.json",
        "--out",
        out,
    )


def test_gather_needs_every_shard_of_its_own_method(tiny_data, identity_shards, tmp_path):
    s0, s1 = identity_shards / "shard-0-of-2.npz", identity_shards / "shard-1-of-2.npz"
    _fails_cleanly(_gather(tiny_data, [s0], tmp_path / "t.npz"), "missing shard(s) [1]")
    _fails_cleanly(_gather(tiny_data, [s0, s1], tmp_path / "t.npz", method="cdm"), "not of 'cdm'")
    _fails_cleanly(_gather(tiny_data, [s0, s1], tmp_path / "t.npz", slices="val.npz"), "another split")
    assert not (tmp_path / "t.npz").exists()
    res = _gather(tiny_data, [s1, s0], tmp_path / "t.npz")  # order of the files does not matter
    assert res.returncode == 0, res.stderr[-2000:]


def test_gather_refuses_a_manifest_of_another_slice_size(tiny_data, identity_shards, tmp_path):
    """Shards that fit the slices but a manifest from a 48 px prepare: NIfTI affines would be wrong."""
    res = run_lmid(
        "prepare",
        "--params",
        TINY,
        "--set",
        "prepare.size=48",
        "--raw",
        tiny_data.parent / "raw",
        "--out",
        tmp_path / "slices48",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    shards = [identity_shards / f"shard-{k}-of-2.npz" for k in (0, 1)]
    res = run_lmid(
        "gather",
        "--method",
        "identity",
        "--shards",
        *shards,
        "--slices",
        tiny_data / "test.npz",
        "--manifest",
        tmp_path / "slices48/manifest.json",
        "--out",
        tmp_path / "t.npz",
        "--nifti-dir",
        tmp_path / "nifti",
    )
    _fails_cleanly(res, "manifest.json", "48x48")
    assert not (tmp_path / "nifti").exists() or not any((tmp_path / "nifti").iterdir())
    assert not (tmp_path / "t.npz").exists(), "gather wrote the translations before checking the manifest"


def test_gather_checks_the_manifest_before_writing_anything(tiny_data, identity_shards, tmp_path):
    """A manifest without the geometry of one test subject: nothing may be written, not even the .npz."""
    import json

    manifest = json.loads((tiny_data / "manifest.json").read_text())
    test_subjects = sorted(set(map(str, np.load(tiny_data / "test.npz")["subject"])))
    del manifest["subjects"][test_subjects[0]]
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps(manifest))
    shards = [identity_shards / f"shard-{k}-of-2.npz" for k in (0, 1)]
    res = run_lmid(
        "gather",
        "--method",
        "identity",
        "--shards",
        *shards,
        "--slices",
        tiny_data / "test.npz",
        "--manifest",
        bad,
        "--out",
        tmp_path / "t.npz",
        "--nifti-dir",
        tmp_path / "nifti",
    )
    _fails_cleanly(res, str(bad), test_subjects[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_gather_refuses_shards_of_mixed_sizes(tiny_data, identity_shards, tmp_path):
    res = run_lmid(
        "prepare",
        "--params",
        TINY,
        "--set",
        "prepare.size=48",
        "--raw",
        tiny_data.parent / "raw",
        "--out",
        tmp_path / "slices48",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    # A shard made from the 48 px split, beside one from the 32 px split.
    assert (
        run_lmid(
            "train",
            "--params",
            TINY,
            "--set",
            "prepare.size=48",
            "--method",
            "identity",
            "--train",
            tmp_path / "slices48/train.npz",
            "--val",
            tmp_path / "slices48/val.npz",
            "--out",
            tmp_path / "m48",
        ).returncode
        == 0
    )
    res = run_lmid(
        "translate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--model",
        tmp_path / "m48/model.pt",
        "--slices",
        tmp_path / "slices48/test.npz",
        "--shard",
        1,
        "--num-shards",
        2,
        "--out",
        tmp_path / "shard-1-of-2.npz",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_lmid(
        "gather",
        "--method",
        "identity",
        "--shards",
        identity_shards / "shard-0-of-2.npz",
        tmp_path / "shard-1-of-2.npz",
        "--slices",
        tiny_data / "test.npz",
        "--manifest",
        tiny_data / "manifest.json",
        "--out",
        tmp_path / "t.npz",
    )
    _fails_cleanly(res, "shard-1-of-2.npz", "48x48")
    assert not (tmp_path / "t.npz").exists()


def test_evaluate_refuses_translations_of_another_split(tiny_data, identity_shards, tmp_path):
    tr = tmp_path / "translations.npz"
    shards = [identity_shards / f"shard-{k}-of-2.npz" for k in (0, 1)]
    assert _gather(tiny_data, shards, tr).returncode == 0
    res = run_lmid(
        "evaluate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--translations",
        tr,
        "--slices",
        tiny_data / "val.npz",
        "--segmenter",
        identity_shards / "kmeans.json",
        "--out",
        tmp_path / "m.csv",
    )
    _fails_cleanly(res, str(tr), str(tiny_data / "val.npz"))
    assert not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("label", 5, ("'label'", "tissue classes")),
        ("target", 1.5, ("'target'", "[0, 1]")),
        # The second source (T2 → T1) is read like the first: out of range or NaN is refused.
        ("extra_T2", 2.5, ("'extra_T2'", "[0, 1]")),
        ("extra_T2", float("nan"), ("'extra_T2'", "NaN")),
    ],
)
def test_out_of_range_slices_are_refused(tiny_data, identity_shards, tmp_path, key, value, words):
    z = dict(np.load(tiny_data / "test.npz"))
    z[key] = z[key].copy()
    z[key].flat[0] = value
    bad = tmp_path / "test.npz"
    np.savez(bad, **z)
    res = run_lmid(
        "translate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--model",
        identity_shards / "identity/model.pt",
        "--slices",
        bad,
        "--out",
        tmp_path / "s.npz",
    )
    _fails_cleanly(res, str(bad), *words)
    assert not (tmp_path / "s.npz").exists()


def test_negative_limit_is_refused(tiny_data, identity_shards, tmp_path):
    res = run_lmid(
        "translate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--model",
        identity_shards / "identity/model.pt",
        "--slices",
        tiny_data / "test.npz",
        "--limit",
        "-1",
        "--out",
        tmp_path / "s.npz",
    )
    assert res.returncode == 2 and "--limit" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "s.npz").exists()


def test_train_refuses_splits_that_share_subjects(tiny_data, tmp_path):
    res = run_lmid(
        "train",
        "--params",
        TINY,
        "--method",
        "identity",
        "--train",
        tiny_data / "train.npz",
        "--val",
        tiny_data / "train.npz",
        "--out",
        tmp_path / "m",
    )
    _fails_cleanly(res, "shares subject")


# ------------------------------------------------------------------ strict parameters
@pytest.mark.parametrize(
    "make, words",
    [
        (lambda t: _params(t, TINY.read_text() + "seed: 8\n"), ("seed", "twice")),
        (lambda t: _params(t, prepare__size=True), ("prepare.size", "expected a number")),
        (lambda t: _params(t, methods=[]), ("methods",)),
        (lambda t: _params(t, prepare__percentiles=[0.5, 150]), ("percentiles", "0 <= low < high <= 100")),
        (lambda t: _params(t, prepare__size=34), ("prepare.size 34", "divisible by 4")),
        # true/false inside tuples, lists and optional numbers, and strings for numbers.
        (
            lambda t: _params(t, prepare__percentiles=[False, True]),
            ("prepare.percentiles", "expected a number, got false"),
        ),
        (
            lambda t: _params(t, diffusion__train__blur_sigma=[True, False]),
            ("diffusion.train.blur_sigma", "expected a number, got true"),
        ),
        (lambda t: _params(t, unseen_protocol__snr=True), ("unseen_protocol.snr", "expected a number, got true")),
        (lambda t: _params(t, sdedit__t0_grid=[True, 7.5]), ("sdedit.t0_grid", "item 0", "got true")),
        (lambda t: _params(t, seed="12"), ("seed", "the string '12'")),
        (lambda t: _params(t, data__registration=1), ("data.registration", "true or false")),
        (lambda t: _params(t, ""), ("params.yaml", "empty")),
        (lambda t: _params(t, "# only a comment\n"), ("params.yaml", "empty")),
    ],
)
def test_loose_parameters_are_refused(tmp_path, make, words):
    res = run_lmid("generate", "--params", make(tmp_path), "--out", tmp_path / "raw")
    _fails_cleanly(res, *words)
    assert not (tmp_path / "raw").exists()


def test_non_utf8_params_file_is_one_clear_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(TINY.read_bytes() + b"# caf\xe9\n")
    _fails_cleanly(run_lmid("generate", "--params", path, "--out", tmp_path / "raw"), str(path), "UTF-8")


@pytest.mark.parametrize(
    "sets, words",
    [
        (["k=[1,"], ("--set", "not valid YAML")),
        (["seed=1", "seed.x=2"], ("--set", "seed")),
        (["prepare.size=true"], ("--set prepare.size", "expected a number")),
        (["seed.x=1"], ("--set seed.x", "seed")),
        (["diffusion.train.lr=1e-3", "seed='12'"], ("--set seed", "string")),  # 1e-3 is a number on the command line
    ],
)
def test_bad_set_values_name_set(tmp_path, sets, words):
    args = [a for s in sets for a in ("--set", s)]
    res = run_lmid("generate", "--params", TINY, *args, "--out", tmp_path / "raw")
    message = _fails_cleanly(res, *words)
    assert str(TINY) not in message, "the error is the --set's, not the file's"


def test_bad_device_is_one_clear_line(tiny_data, identity_shards, tmp_path):
    import torch

    common = [
        "translate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--model",
        identity_shards / "identity/model.pt",
        "--slices",
        tiny_data / "test.npz",
        "--out",
        tmp_path / "s.npz",
    ]
    _fails_cleanly(run_lmid(*common, "--device", "banana"), "--device 'banana'")
    if not torch.cuda.is_available():
        _fails_cleanly(run_lmid(*common, "--device", "cuda"), "--device cuda", "no CUDA")
    if not torch.backends.mps.is_available():  # every machine but an Apple one
        _fails_cleanly(run_lmid(*common, "--device", "mps"), "--device mps", "no Apple MPS")
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--samples", "-1"], ("--samples", "at least 1")),
        (["--samples", "0"], ("--samples", "at least 1")),
        (["--num-shards", "0"], ("--num-shards", "at least 1")),
        (["--shard", "2", "--num-shards", "2"], ("--shard 2", "0..1")),
        (["--shard", "-1"], ("--shard", "0 or more")),
    ],
)
def test_bad_translate_counts_are_one_clear_line(tiny_data, identity_shards, tmp_path, extra, words):
    res = run_lmid(
        "translate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--model",
        identity_shards / "identity/model.pt",
        "--slices",
        tiny_data / "test.npz",
        "--out",
        tmp_path / "s.npz",
        *extra,
    )
    _fails_cleanly(res, *words)
    assert not (tmp_path / "s.npz").exists()


def test_out_at_an_existing_folder_names_that_folder(tiny_data, identity_shards, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    res = run_lmid(
        "translate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--model",
        identity_shards / "identity/model.pt",
        "--slices",
        tiny_data / "test.npz",
        "--out",
        folder,
    )
    message = _fails_cleanly(res, str(folder), "is a folder")
    assert ".tmp" not in message, message
    assert list(folder.iterdir()) == []


def test_a_translation_with_nan_pixels_is_not_written(tiny_data, lmidiffusion_folder, tmp_path):
    """A model whose weights went NaN translates to NaN; clipping keeps NaN, so translate refuses
    to write it instead of leaving it for evaluate to trip over."""
    import torch

    folder = tmp_path / "lmidiffusion"
    shutil.copytree(lmidiffusion_folder, folder)
    state = torch.load(folder / "model.pt", weights_only=True)
    state["state_dict"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state["state_dict"].items()
    }
    torch.save(state, folder / "model.pt")
    out = tmp_path / "shard.npz"
    res = run_lmid(
        "translate",
        "--params",
        TINY,
        "--method",
        "lmidiffusion",
        "--model",
        folder / "model.pt",
        "--slices",
        tiny_data / "test.npz",
        "--limit",
        "1",
        "--out",
        out,
    )
    _fails_cleanly(res, "NaN", str(out))
    assert not out.exists()


def test_check_baselines_refuses_models_it_cannot_check(tiny_data, tmp_path):
    """A folder not named after a method, a method it does not check and a missing model end with
    exit 2 naming the file, not exit 0 and an empty baselines.json."""
    (tmp_path / "gan").mkdir()
    (tmp_path / "gan" / "model.pt").write_bytes(b"weights")
    (tmp_path / "identity").mkdir()
    (tmp_path / "identity" / "model.pt").write_bytes(b"weights")
    out, images = tmp_path / "baselines.json", tmp_path / "samples.npz"
    for model, words in [
        (tmp_path / "gan" / "model.pt", ("'gan' is not a method", "stylegan2")),
        (tmp_path / "identity" / "model.pt", ("'identity'", "does not inspect")),
        (tmp_path / "stylegan2" / "model.pt", ("stylegan2/model.pt", "not found")),
    ]:
        res = run_lmid(
            "check-baselines",
            "--params",
            TINY,
            "--models",
            model,
            "--test",
            tiny_data / "test.npz",
            "--out",
            out,
            "--images",
            images,
        )
        _fails_cleanly(res, str(model), *words)
        assert not out.exists() and not images.exists()


@pytest.mark.parametrize("case", ["missing-slices-dir", "slices-dir-without-test-split", "missing-models-dir"])
def test_report_refuses_folders_that_are_not_there(tiny_data, tmp_path, case):
    """A mistyped folder would give a page of "not run" notes and exit 0."""
    dirs = {
        "reports": tmp_path / "reports",
        "models": tmp_path / "models",
        "metrics": tmp_path / "metrics",
        "translations": tmp_path / "translations",
        "slices": tiny_data,
    }
    for name in ("reports", "models", "metrics", "translations"):
        dirs[name].mkdir()
    if case == "missing-slices-dir":
        dirs["slices"], flag = tmp_path / "slices-typo", "--slices-dir"
    elif case == "slices-dir-without-test-split":
        dirs["slices"], flag = tmp_path / "metrics", "--slices-dir"
    else:
        dirs["models"], flag = tmp_path / "modles", "--models-dir"
    res = run_lmid(
        "report",
        "--params",
        TINY,
        "--reports-dir",
        dirs["reports"],
        "--models-dir",
        dirs["models"],
        "--metrics-dir",
        dirs["metrics"],
        "--translations-dir",
        dirs["translations"],
        "--slices-dir",
        dirs["slices"],
        "--out",
        tmp_path / "reports" / "index.html",
    )
    _fails_cleanly(res, flag, str(dirs["slices"] if flag == "--slices-dir" else dirs["models"]))
    assert not (tmp_path / "reports" / "index.html").exists()


def test_an_impossible_out_path_is_one_clear_line(tiny_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_lmid("prepare", "--params", TINY, "--raw", tiny_data.parent / "raw", "--out", blocker / "slices")
    _fails_cleanly(res, str(blocker))


def test_a_pd_volume_without_orientation_is_refused(tiny_data, tmp_path):
    """pixdim 0 and neither qform nor sform: nibabel only warns and invents an affine."""
    import nibabel as nib

    raw = tmp_path / "raw"
    shutil.copytree(tiny_data.parent / "raw", raw)
    pd_file = sorted(raw.glob("*-PD.nii.gz"))[0]
    img = nib.load(pd_file)
    bad = nib.Nifti1Image(np.asarray(img.dataobj), None)
    bad.header["pixdim"][1:4] = 0
    bad.header["qform_code"] = 0
    bad.header["sform_code"] = 0
    nib.save(bad, pd_file)
    res = run_lmid("prepare", "--params", TINY, "--raw", raw, "--out", tmp_path / "slices")
    _fails_cleanly(res, pd_file.name, "orientation")
    assert not (tmp_path / "slices").exists()


def test_a_target_that_misses_most_of_the_brain_is_named_as_such(tiny_data, tmp_path):
    """The coverage of the brain mask is checked before anything else complains about intensities."""
    import nibabel as nib

    raw = tmp_path / "raw"
    shutil.copytree(tiny_data.parent / "raw", raw)
    t1 = sorted(raw.glob("*-T1.nii.gz"))[0]
    img = nib.load(t1)
    data = np.asarray(img.dataobj).copy()
    data[: int(0.7 * data.shape[0])] = 0  # most of the head gone, as after a failed registration
    nib.save(nib.Nifti1Image(data, img.affine, img.header), t1)
    res = run_lmid("prepare", "--params", TINY, "--raw", raw, "--out", tmp_path / "slices")
    _fails_cleanly(res, t1.name, "covers only")


def test_a_model_refuses_slices_of_another_size(tiny_data, identity_shards, tmp_path):
    """A fully convolutional network would translate 48 px slices after training on 32 px ones."""
    res = run_lmid(
        "prepare",
        "--params",
        TINY,
        "--set",
        "prepare.size=48",
        "--raw",
        tiny_data.parent / "raw",
        "--out",
        tmp_path / "slices48",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_lmid(
        "translate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--model",
        identity_shards / "identity/model.pt",
        "--slices",
        tmp_path / "slices48/test.npz",
        "--out",
        tmp_path / "s.npz",
    )
    _fails_cleanly(res, "trained on 32x32", "48x48")
    assert not (tmp_path / "s.npz").exists()


def test_a_full_disk_is_one_clear_line_and_leaves_nothing(tmp_path):
    """Writes that fail (here: a 2 kB file-size limit, as a full disk would) end the step with the
    OS's reason, and the staging folder is gone."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    res = subprocess.run(
        [sys.executable, "-m", "lmid", "generate", "--params", str(TINY), "--out", str(tmp_path / "raw")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit,
        env={**os.environ},
    )
    message = _fails_cleanly(res, "File too large", f"{tmp_path / 'raw'}{os.sep}")
    assert ".staging" not in message and ".tmp" not in message, message  # the file it was making
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ splits paired by content
@pytest.fixture(scope="module")
def unseen_test(tiny_data, tmp_path_factory) -> Path:
    """The tiny subjects simulated again on the unseen protocol and prepared: a test split with the
    same subjects and planes as tiny_data's, and other images."""
    d = tmp_path_factory.mktemp("unseen")
    res = run_lmid("generate", "--params", TINY, "--protocol", "unseen", "--out", d / "raw_3t")
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_lmid("prepare", "--params", TINY, "--raw", d / "raw_3t", "--out", d / "slices_3t")
    assert res.returncode == 0, res.stderr[-2000:]
    main, twin = np.load(tiny_data / "test.npz"), np.load(d / "slices_3t" / "test.npz")
    assert np.array_equal(main["subject"], twin["subject"]) and np.array_equal(main["slice_index"], twin["slice_index"])
    assert not np.array_equal(main["source"], twin["source"])
    return d / "slices_3t" / "test.npz"


def test_translations_are_paired_with_their_split_by_content(tiny_data, identity_shards, unseen_test, tmp_path):
    """Same subjects, same planes, other images (the unseen protocol): gather and evaluate refuse."""
    shards = [identity_shards / f"shard-{k}-of-2.npz" for k in (0, 1)]
    res = _gather(tiny_data, shards, tmp_path / "t.npz", slices=unseen_test)
    _fails_cleanly(res, str(shards[0]), str(unseen_test), "another split")
    assert not (tmp_path / "t.npz").exists()
    tr = tmp_path / "translations.npz"
    assert _gather(tiny_data, shards, tr).returncode == 0
    assert "split_fingerprint" in np.load(tr).files
    res = run_lmid(
        "evaluate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--translations",
        tr,
        "--slices",
        unseen_test,
        "--segmenter",
        identity_shards / "kmeans.json",
        "--out",
        tmp_path / "m.csv",
    )
    _fails_cleanly(res, str(tr), str(unseen_test), "another split")
    assert not (tmp_path / "m.csv").exists()


def test_gather_refuses_shards_of_two_splits(tiny_data, identity_shards, unseen_test, tmp_path):
    twin_shard = tmp_path / "shard-1-of-2.npz"
    res = run_lmid(
        "translate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--model",
        identity_shards / "identity/model.pt",
        "--slices",
        unseen_test,
        "--shard",
        1,
        "--num-shards",
        2,
        "--out",
        twin_shard,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    for slices in (tiny_data / "test.npz", unseen_test):
        res = _gather(tiny_data, [identity_shards / "shard-0-of-2.npz", twin_shard], tmp_path / "t.npz", slices=slices)
        _fails_cleanly(res, str(slices), "another split")
        assert not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize("split", ["val", "unseen"])
def test_evaluate_refuses_an_ungathered_shard_of_another_split(
    tiny_data, identity_shards, unseen_test, tmp_path, split
):
    slices = tiny_data / "val.npz" if split == "val" else unseen_test
    shard = identity_shards / "shard-0-of-2.npz"  # 3 slices of the test split: indices valid in val too
    res = run_lmid(
        "evaluate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--translations",
        shard,
        "--slices",
        slices,
        "--segmenter",
        identity_shards / "kmeans.json",
        "--out",
        tmp_path / "m.csv",
    )
    _fails_cleanly(res, str(shard), str(slices))
    assert not (tmp_path / "m.csv").exists()


def test_evaluate_refuses_translations_without_a_split_fingerprint(tiny_data, identity_shards, tmp_path):
    """A file that cannot say which split it came from (an older lmid, made by hand) is not scored."""
    tr = tmp_path / "translations.npz"
    assert _gather(tiny_data, [identity_shards / f"shard-{k}-of-2.npz" for k in (0, 1)], tr).returncode == 0
    arrays = dict(np.load(tr))
    del arrays["split_fingerprint"]
    np.savez(tr, **arrays)
    res = run_lmid(
        "evaluate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--translations",
        tr,
        "--slices",
        tiny_data / "test.npz",
        "--segmenter",
        identity_shards / "kmeans.json",
        "--out",
        tmp_path / "m.csv",
    )
    _fails_cleanly(res, str(tr), "no fingerprint", "translate again")
    assert not (tmp_path / "m.csv").exists()


# ------------------------------------------------------------------ writes that land elsewhere
@pytest.fixture(scope="module")
def lmidiffusion_folder(tiny_data, tmp_path_factory) -> Path:
    """A trained LMIDiffusion model folder: model.pt, checkpoint.pt, train_info.json."""
    d = tmp_path_factory.mktemp("lmid") / "lmidiffusion"
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
        d,
        "--set",
        "diffusion.train.steps=2",
        "--set",
        "diffusion.train.checkpoint_every=1",
        "--set",
        "diffusion.train.snapshot_every=0",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert all((d / f).is_file() for f in ("model.pt", "checkpoint.pt", "train_info.json"))
    return d


@pytest.mark.parametrize("keep", ["all", "model.pt", "checkpoint.pt", "train_info.json"])
def test_train_refuses_a_folder_holding_another_methods_model(tiny_data, lmidiffusion_folder, tmp_path, keep):
    folder = tmp_path / "models"
    shutil.copytree(lmidiffusion_folder, folder)
    for f in list(folder.iterdir()):
        if keep != "all" and f.name != keep:
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    before = _digests(folder)
    res = run_lmid(
        "train",
        "--params",
        TINY,
        "--method",
        "identity",
        "--train",
        tiny_data / "train.npz",
        "--val",
        tiny_data / "val.npz",
        "--out",
        folder,
    )
    _fails_cleanly(res, str(folder), "'lmidiffusion'", "identity")
    assert _digests(folder) == before, "the other method's files were changed"


def test_a_stale_checkpoint_is_set_aside_not_deleted(tiny_data, lmidiffusion_folder, tmp_path):
    """Other training parameters start afresh, and the old checkpoint stays, renamed."""
    folder = tmp_path / "lmidiffusion"
    shutil.copytree(lmidiffusion_folder, folder)
    old = (folder / "checkpoint.pt").read_bytes()
    old_fingerprint = (folder / "fingerprint.txt").read_text().strip()
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
        folder,
        "--set",
        "diffusion.train.steps=2",
        "--set",
        "diffusion.train.checkpoint_every=1",
        "--set",
        "diffusion.train.snapshot_every=0",
        "--set",
        "diffusion.train.lr=5.0e-4",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    aside = folder / f"checkpoint.stale-{old_fingerprint[:12]}.pt"
    assert aside.is_file() and aside.read_bytes() == old, sorted(p.name for p in folder.iterdir())
    assert "starting afresh" in res.stderr and aside.name in res.stderr, res.stderr[-3000:]
    assert (folder / "checkpoint.pt").is_file() and (folder / "checkpoint.pt").read_bytes() != old


def _translate_args(identity_shards, slices, out):
    return [
        "translate",
        "--params",
        TINY,
        "--method",
        "identity",
        "--model",
        identity_shards / "identity/model.pt",
        "--slices",
        slices,
        "--out",
        out,
    ]


@pytest.mark.parametrize(
    "case",
    [
        "translate-out-is-slices",
        "translate-out-links-to-slices",
        "evaluate-out-is-translations",
        "gather-out-is-a-shard",
        "fit-segmenter-out-is-train",
        "out-is-params",
        "check-baselines-out-is-images",
        "prepare-out-holds-raw",
        "train-out-holds-train",
    ],
)
def test_an_output_that_is_an_input_is_refused(tiny_data, identity_shards, tmp_path, case):
    """Nothing is written, and the input is left as it was."""
    work = tmp_path / "work"
    shutil.copytree(tiny_data, work / "slices")
    shutil.copy(identity_shards / "shard-0-of-2.npz", work)
    shutil.copy(identity_shards / "shard-1-of-2.npz", work)
    shutil.copy(TINY, work / "params.yaml")
    tr = work / "translations.npz"
    assert _gather(work / "slices", [work / "shard-0-of-2.npz", work / "shard-1-of-2.npz"], tr).returncode == 0
    test, params = work / "slices" / "test.npz", work / "params.yaml"
    if case == "translate-out-is-slices":
        args, words = _translate_args(identity_shards, test, test), ("--out", "--slices")
    elif case == "translate-out-links-to-slices":
        (work / "link.npz").symlink_to(test)
        args, words = _translate_args(identity_shards, test, work / "link.npz"), ("--out", "--slices")
    elif case == "evaluate-out-is-translations":
        args = [
            "evaluate",
            "--params",
            TINY,
            "--method",
            "identity",
            "--translations",
            tr,
            "--slices",
            test,
            "--segmenter",
            identity_shards / "kmeans.json",
            "--out",
            tr,
        ]
        words = ("--out", "--translations")
    elif case == "gather-out-is-a-shard":
        args = [
            "gather",
            "--method",
            "identity",
            "--shards",
            work / "shard-0-of-2.npz",
            work / "shard-1-of-2.npz",
            "--slices",
            test,
            "--manifest",
            work / "slices" / "manifest.json",
            "--out",
            work / "shard-1-of-2.npz",
        ]
        words = ("--out", "--shards")
    elif case == "fit-segmenter-out-is-train":
        args = [
            "fit-segmenter",
            "--params",
            TINY,
            "--train",
            work / "slices" / "train.npz",
            "--out",
            work / "slices" / "train.npz",
        ]
        words = ("--out", "--train")
    elif case == "out-is-params":
        args = [
            "translate",
            "--params",
            params,
            "--method",
            "identity",
            "--model",
            identity_shards / "identity/model.pt",
            "--slices",
            test,
            "--out",
            params,
        ]
        words = ("--out", "--params")
    elif case == "check-baselines-out-is-images":
        args = [
            "check-baselines",
            "--params",
            TINY,
            "--models",
            identity_shards / "identity/model.pt",
            "--test",
            test,
            "--out",
            work / "same.npz",
            "--images",
            work / "same.npz",
        ]
        words = ("--out", "--images")
    elif case == "prepare-out-holds-raw":
        shutil.copytree(tiny_data.parent / "raw", work / "raw")
        args, words = ["prepare", "--params", TINY, "--raw", work / "raw", "--out", work], ("--out", "--raw")
    else:
        args = [
            "train",
            "--params",
            TINY,
            "--method",
            "identity",
            "--train",
            work / "slices" / "train.npz",
            "--val",
            work / "slices" / "val.npz",
            "--out",
            work / "slices",
        ]
        words = ("--out", "--train")
    before = {p.relative_to(work): hashlib.sha256(p.read_bytes()).hexdigest() for p in work.rglob("*") if p.is_file()}
    _fails_cleanly(run_lmid(*args), *words)
    after = {p.relative_to(work): hashlib.sha256(p.read_bytes()).hexdigest() for p in work.rglob("*") if p.is_file()}
    assert after == before


def test_every_command_declares_the_paths_it_reads_and_writes():
    """The overwrite check (lmid/cli/__init__.py: COMMAND_PATHS) knows every path argument."""
    import argparse

    from lmid.cli import COMMAND_PATHS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        paths = {a.dest for a in parser._actions if a.type is Path}
        if name == "schema":
            continue
        assert name in COMMAND_PATHS, name
        declared = {d for group in COMMAND_PATHS[name] for d in group}
        assert paths <= declared, (name, sorted(paths - declared))


# ------------------------------------------------------------------ killed runs
def test_a_later_generate_removes_the_staging_folder_of_a_killed_one(tmp_path):
    """kill -9 in the middle of writing the volumes leaves .raw.staging-*; the next run clears it."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    out = tmp_path / "raw"
    cmd = [sys.executable, "-m", "lmid", "generate", "--params", str(TINY), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not any(s.is_dir() and any(s.iterdir()) for s in tmp_path.glob(".raw.staging-*")):
        assert proc.poll() is None, "generate ended before it was killed"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".raw.staging-*")) and not out.exists()
    res = run_lmid("generate", "--params", TINY, "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"], "the killed run's staging folder is still there"
    assert (out / "phantom.json").is_file() and "removed .raw.staging-" in res.stderr
