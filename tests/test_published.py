"""Published models: what `lmid publish` writes, what `lmid use-published` refuses, and that the
weights reproduce the run's own per-slice scores.

A tiny LMIDiffusion is trained, translated and scored through the CLI; the published folder is
then checked file by file, and its check slices translated again from the published weights.
The committed study models (models/study) are held to the same check when they are present.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_lmid

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = "methods=[lmidiffusion, identity]"
SCORE_COLUMNS = ("dice_gt_mean", "dice_km_mean", "psnr", "ssim", "psnr_mask", "ssim_mask")


def _ok(*args):
    res = run_lmid(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _assert_ok(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def run(tiny_data, tiny_params, tmp_path_factory):
    """A trained, translated and scored tiny run, and its published folder."""
    root = tmp_path_factory.mktemp("published")
    models, p = root / "models", ("--params", tiny_params, "--set", METHODS, "--set", "evaluate.sampler_slices=3")
    for m in ("lmidiffusion", "identity"):
        _ok(
            "train",
            *p,
            "--method",
            m,
            "--train",
            tiny_data / "train.npz",
            "--val",
            tiny_data / "val.npz",
            "--out",
            models / m,
        )
    _ok("fit-segmenter", *p, "--train", tiny_data / "train.npz", "--out", models / "kmeans.json")
    _ok(
        "translate",
        *p,
        "--method",
        "lmidiffusion",
        "--model",
        models / "lmidiffusion/model.pt",
        "--slices",
        tiny_data / "test.npz",
        "--out",
        root / "shard.npz",
    )
    _ok(
        "evaluate",
        *p,
        "--method",
        "lmidiffusion",
        "--translations",
        root / "shard.npz",
        "--slices",
        tiny_data / "test.npz",
        "--segmenter",
        models / "kmeans.json",
        "--out",
        root / "scores.csv",
    )
    for setting in SWEEP_SETTINGS:
        _assert_ok(_sweep(p, models, tiny_data, root / "sweep", setting))
    _ok(
        "publish",
        *p,
        "--models",
        models,
        "--train",
        tiny_data / "train.npz",
        "--test",
        tiny_data / "test.npz",
        "--scores",
        root / "scores.csv",
        "--sampler-scores",
        root / "sweep" / f"{SWEEP_SETTINGS[0]}.csv",
        "--val",
        tiny_data / "val.npz",
        "--commit",
        "abc123",
        "--out",
        root / "pub",
    )
    return root, tiny_data, p


#: Sampler settings swept in the fixture run; only the first one's scores are published.
SWEEP_SETTINGS = ("ddim-1", "ddim-2-quad")  # the first spelt without its (uniform) spacing


def _sweep(p, models: Path, slices: Path, out: Path, setting: str, *extra) -> subprocess.CompletedProcess:
    return run_lmid(
        "sampler-sweep",
        *p,
        "--model",
        models / "lmidiffusion/model.pt",
        "--slices",
        slices / "val.npz",
        "--manifest",
        slices / "manifest.json",
        "--segmenter",
        models / "kmeans.json",
        "--sampler",
        setting,
        "--shard-out",
        out / setting / "shard.npz",
        "--translations-out",
        out / setting / "translations.npz",
        "--out",
        out / f"{setting}.csv",
        *extra,
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_publish_writes_weights_sums_readme_and_no_training_state(run):
    root, _, _ = run
    pub = root / "pub"
    sums = dict(reversed(line.split("  ", 1)) for line in (pub / "SHA256SUMS").read_text().splitlines())
    files = {str(f.relative_to(pub)) for f in pub.rglob("*") if f.is_file()} - {"SHA256SUMS", "README.md"}
    assert set(sums) == files
    assert all(_sha(pub / name) == digest for name, digest in sums.items())
    assert {
        "lmidiffusion/model.pt",
        "identity/model.pt",
        "kmeans.json",
        "params.yaml",
        "manifest.json",
        "check/slices.npz",
        "check/scores.csv",
        f"sampler/{SWEEP_SETTINGS[0]}.csv",
    } <= files
    assert not any("checkpoint" in f or "snapshots" in f for f in files)
    # model.pt is copied as training wrote it (inference weights only).
    assert _sha(pub / "lmidiffusion/model.pt") == _sha(root / "models/lmidiffusion/model.pt")
    readme = (pub / "README.md").read_text()
    assert "abc123" in readme and sums["lmidiffusion/model.pt"] in readme and "| LMIDiffusion | 6 |" in readme


def test_use_published_copies_checked_weights(run, tmp_path):
    root, slices, p = run
    _ok(
        "use-published",
        *p,
        "--published",
        root / "pub",
        "--method",
        "lmidiffusion",
        "--train",
        slices / "train.npz",
        "--out",
        tmp_path / "lmidiffusion",
    )
    for name in ("model.pt", "train_info.json", "train_log.csv"):
        assert _sha(tmp_path / "lmidiffusion" / name) == _sha(root / "models/lmidiffusion" / name)


@pytest.mark.parametrize("case", ["tampered", "other_params", "other_split", "not_published"])
def test_use_published_refuses_with_one_clear_line(run, tmp_path, case):
    root, slices, p = run
    pub, train, method, extra = root / "pub", slices / "train.npz", "lmidiffusion", []
    if case == "tampered":
        pub = tmp_path / "pub"
        import shutil

        shutil.copytree(root / "pub", pub)
        data = bytearray((pub / "lmidiffusion/model.pt").read_bytes())
        data[-10] ^= 0xFF
        (pub / "lmidiffusion/model.pt").write_bytes(bytes(data))
        want = "sha256"
    elif case == "other_params":
        extra, want = ["--set", "diffusion.train.lr=0.01"], "diffusion.train.lr"
    elif case == "other_split":
        train, want = slices / "val.npz", "is not the training split"
    else:
        method, want = "cyclegan", "publishes no 'cyclegan'"
    res = run_lmid(
        "use-published", *p, *extra, "--published", pub, "--method", method, "--train", train, "--out", tmp_path / "out"
    )
    assert res.returncode == 2 and want in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_sweep_from_published_checks_two_slices_then_reuses_the_published_scores(run, tmp_path):
    root, slices, p = run
    models, setting = root / "models", SWEEP_SETTINGS[0]
    _assert_ok(_sweep(p, models, slices, tmp_path, setting, "--published", root / "pub"))
    published = pd.read_csv(root / "pub/sampler" / f"{setting}.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / f"{setting}.csv"), published)
    # Only the first published_sweep_check (2) of the 3 picked slices were sampled again.
    with np.load(tmp_path / setting / "translations.npz") as z:
        assert len(z["image"]) == 2
    # A setting the folder does not publish is sampled in full, as without --published.
    _assert_ok(_sweep(p, models, slices, tmp_path, SWEEP_SETTINGS[1], "--published", root / "pub"))
    again, before = (
        pd.read_csv(d / f"{SWEEP_SETTINGS[1]}.csv").drop(columns="wall_s") for d in (tmp_path, root / "sweep")
    )
    pd.testing.assert_frame_equal(again, before)


@pytest.mark.parametrize("case", ["scores_differ", "other_params", "other_split", "other_limit"])
def test_sweep_from_published_refuses_scores_it_cannot_reproduce(run, tmp_path, case):
    root, slices, p = run
    models, setting, pub, extra = root / "models", SWEEP_SETTINGS[0], tmp_path / "pub", []
    shutil.copytree(root / "pub", pub)
    if case == "scores_differ":
        # As if the weights had changed after the sweep was published (SHA256SUMS kept in step).
        name = f"sampler/{setting}.csv"
        df = pd.read_csv(pub / name)
        df.loc[df["index"] == df["index"].min(), "dice_km_mean"] += 0.01
        df.to_csv(pub / name, index=False)
        sums = (
            (pub / "SHA256SUMS")
            .read_text()
            .replace(_sha(root / "pub" / name), hashlib.sha256((pub / name).read_bytes()).hexdigest())
        )
        (pub / "SHA256SUMS").write_text(sums)
        want = "re-sampled from the published weights gives dice_km_mean"
    elif case == "other_params":
        extra, want = ["--set", "lmi.bins=7"], "lmi.bins"
    elif case == "other_split":
        # The test split standing in for the validation split.
        other, want = tmp_path / "slices", "is not the validation split"
        other.mkdir()
        shutil.copyfile(slices / "test.npz", other / "val.npz")
        shutil.copyfile(slices / "manifest.json", other / "manifest.json")
        slices = other
    else:
        extra, want = ["--limit", "2"], "another --limit"
    out = tmp_path / "out"
    res = _sweep(p, models, slices, out, setting, "--published", pub, *extra)
    assert res.returncode == 2 and want in res.stderr, res.stderr[-2000:]
    assert not (out / f"{setting}.csv").exists()


def _reproduce(pub: Path, params: Path, tmp_path: Path, method: str, overrides=()) -> tuple[pd.DataFrame, pd.DataFrame]:
    p = ("--params", params, *overrides)
    _ok(
        "translate",
        *p,
        "--method",
        method,
        "--model",
        pub / method / "model.pt",
        "--slices",
        pub / "check/slices.npz",
        "--out",
        tmp_path / "check.npz",
    )
    _ok(
        "evaluate",
        *p,
        "--method",
        method,
        "--translations",
        tmp_path / "check.npz",
        "--slices",
        pub / "check/slices.npz",
        "--segmenter",
        pub / "kmeans.json",
        "--out",
        tmp_path / "again.csv",
    )
    return pd.read_csv(pub / "check/scores.csv"), pd.read_csv(tmp_path / "again.csv")


def _same_scores(want: pd.DataFrame, got: pd.DataFrame) -> None:
    assert len(want) == len(got) == 3
    assert list(want["subject"].astype(str)) == list(got["subject"].astype(str))
    for col in SCORE_COLUMNS:
        if col in want.columns and want[col].notna().any():
            np.testing.assert_allclose(
                got[col].to_numpy(float), want[col].to_numpy(float), rtol=0, atol=1e-6, err_msg=col
            )


def test_published_weights_reproduce_the_runs_per_slice_scores(run, tmp_path):
    root, _, p = run
    want, got = _reproduce(root / "pub", p[1], tmp_path, "lmidiffusion", p[2:])
    _same_scores(want, got)


STUDY = ROOT / "models" / "study"


@pytest.mark.skipif(not (STUDY / "SHA256SUMS").is_file(), reason="models/study is not published in this checkout")
def test_committed_study_models_reproduce_three_committed_scores(tmp_path):
    from lmid.published import verify

    verify(STUDY)
    want, got = _reproduce(STUDY, STUDY / "params.yaml", tmp_path, "lmidiffusion")
    _same_scores(want, got)
