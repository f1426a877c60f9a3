"""Published models: what `lmid publish` writes, what `lmid use-published` refuses, and that the
weights reproduce the run's own per-slice scores.

A tiny LMIDiffusion is trained, translated and scored through the CLI; the published folder is
then checked file by file, and its check slices translated again from the published weights.
The committed study models (models/study) are held to the same check when they are present.
"""

from __future__ import annotations

import hashlib
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


@pytest.fixture(scope="module")
def run(tiny_data, tiny_params, tmp_path_factory):
    """A trained, translated and scored tiny run, and its published folder."""
    root = tmp_path_factory.mktemp("published")
    models, p = root / "models", ("--params", tiny_params, "--set", METHODS)
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
        "--commit",
        "abc123",
        "--out",
        root / "pub",
    )
    return root, tiny_data, p


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
