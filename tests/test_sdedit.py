"""SDEdit: unconditional target-only DDPM, t0 chosen on validation slices, translation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmid.checkpoint import load_checkpoint
from lmid.config import Params
from lmid.diffusion.trainer import DiffusionTrainer
from lmid.methods import get_method
from lmid.methods.sdedit import SDEdit, choose_t0, sdedit_translate
from conftest import SIZE, slice_set

CPU = torch.device("cpu")


# One torch thread for these tiny networks (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_params(**sdedit) -> Params:
    return Params.model_validate(
        {
            "seed": 13,
            "diffusion": {
                "schedule": {"timesteps": 40},
                "unet": {
                    "channels": [8, 16],
                    "attention_levels": [False, True],
                    "num_res_blocks": 1,
                    "num_head_channels": 8,
                    "norm_num_groups": 4,
                    "dropout": 0.0,
                },
                "train": {"steps": 4, "batch_size": 2, "checkpoint_every": 4, "log_every": 1, "ema_decay": 0.5},
            },
            "sdedit": {
                "t0_grid": [0.2, 0.5, 0.8],
                "repeats": 2,
                "val_slices": 3,
                "kind": "ancestral",
                "steps": 1000,
                "batch_size": 4,
                **sdedit,
            },
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdedit_model")
    params = tiny_params()
    method = get_method("sdedit")
    info = method.train(params, method.training_data(params, slice_set(6)), slice_set(4, seed=1), out, CPU)
    return params, method, method.load(params, out / "model.pt", CPU), info, out


def test_training_data_has_no_source(tmp_path, monkeypatch):
    params = tiny_params(t0_grid=[0.3], val_slices=1)
    train = slice_set(6)
    method = SDEdit()
    data = method.training_data(params, train)
    assert data.source is None
    seen = {}
    real_fit = DiffusionTrainer.fit

    def spy(self, images, stop_after=None):
        seen["images"] = np.array(images, copy=True)
        seen["channels"] = self.in_channels
        return real_fit(self, images, stop_after)

    monkeypatch.setattr(DiffusionTrainer, "fit", spy)
    method.train(params, data, slice_set(2, seed=1), tmp_path, CPU)
    assert seen["channels"] == 1
    assert np.array_equal(seen["images"], train.target)
    for s in train.source:
        assert not any(np.allclose(s, im) for im in seen["images"])


def test_t0_chosen_on_validation_and_stored(trained):
    params, _, model, info, out = trained
    sweep = info["t0_sweep"]
    assert [r["t0"] for r in sweep] == [0.2, 0.5, 0.8]
    assert all(r["slices"] == 3 and np.isfinite(r["ssim"]) and np.isfinite(r["psnr"]) for r in sweep)
    best = max(sweep, key=lambda r: r["ssim"])["t0"]
    assert info["t0"] == best and model.meta["t0"] == best
    stored = load_checkpoint(out / "model.pt")
    assert stored["meta"]["t0"] == best and stored["meta"]["t0_sweep"] == sweep
    # nfe of the chosen level: ancestral from index round(t0·T) − 1 down to 0, K = 2 times.
    assert info["nfe_per_slice"] == round(best * 40) * 2


def test_choose_t0_uses_the_given_slices_only(trained):
    params, _, model, _, _ = trained
    val = slice_set(4, seed=1)
    t0, sweep = choose_t0(model, val, params.sdedit, params.seed, CPU)
    again, sweep2 = choose_t0(model, val, params.sdedit, params.seed, CPU)
    assert (t0, sweep) == (again, sweep2)  # seeded
    # Another validation set gives other numbers: the sweep is measured on what it is given.
    _, other = choose_t0(model, slice_set(4, seed=9), params.sdedit, params.seed, CPU)
    assert [r["ssim"] for r in other] != [r["ssim"] for r in sweep]
    # No validation slices: the reference default, no sweep.
    t0_none, empty = choose_t0(model, slice_set(4).subset(np.array([], dtype=int)), params.sdedit, params.seed, CPU)
    assert empty == [] and t0_none in params.sdedit.t0_grid


@pytest.mark.parametrize("kind,steps", [("ancestral", 1000), ("ddim", 3)])
def test_translate(trained, kind, steps):
    params, method, model, _, _ = trained
    p = tiny_params(kind=kind, steps=steps)
    source = slice_set(3, seed=7).source
    seeds = np.array([1, 2, 3])
    a = method.translate(p, model, source, seeds, CPU)
    b = method.translate(p, model, source, seeds, CPU)
    assert a.image.shape == (3, SIZE, SIZE) and a.image.min() >= 0 and a.image.max() <= 1
    assert np.array_equal(a.image, b.image)
    t0 = model.meta["t0"]
    assert a.info["t0"] == t0  # the stored level
    per_repeat = round(t0 * 40) if kind == "ancestral" else 3
    assert a.nfe == per_repeat * 2
    # Batching does not change a slice's result.
    two = sdedit_translate(model, source, seeds, p.sdedit.model_copy(update={"batch_size": 1}), t0, 1, CPU)
    assert np.allclose(two.image, a.image, atol=1e-5, rtol=0)


def test_samples_std(trained):
    params, method, model, _, _ = trained
    out = method.translate(params, model, slice_set(2, seed=8).source, np.array([4, 5]), CPU, samples=2)
    assert out.std.shape == (2, SIZE, SIZE) and (out.std >= 0).all() and out.std.max() > 0


def test_model_without_t0_is_refused(tmp_path):
    from lmid.errors import LmidError

    params = tiny_params()
    trainer = DiffusionTrainer(params.diffusion, seed=1, out_dir=tmp_path, device=CPU, method="sdedit")
    trainer.fit(slice_set(4).target)
    trainer.inference_model().save(tmp_path / "model.pt")
    with pytest.raises(LmidError, match="t0"):
        get_method("sdedit").load(params, tmp_path / "model.pt", CPU)


def test_ddpm_snapshot_curve_of_the_baseline_checks(tmp_path):
    """check-baselines judges SDEdit's DDPM at every snapshot: one W1 per snapshot, and the last
    snapshot (the final EMA weights) gives the same samples as the trained model."""
    from lmid.evaluation.baselines import ddpm_samples, ddpm_snapshot_curve, foreground_stats

    base = tiny_params()
    train = {**base.diffusion.train.model_dump(), "steps": 4, "snapshot_every": 2}
    params = Params.model_validate({**base.model_dump(), "diffusion": {**base.diffusion.model_dump(), "train": train}})
    method = get_method("sdedit")
    method.train(params, method.training_data(params, slice_set(6)), slice_set(2, seed=1), tmp_path, CPU)
    real = slice_set(8, seed=3).target
    curve = ddpm_snapshot_curve(params, tmp_path / "snapshots", 4, real, CPU)
    assert [r["step"] for r in curve] == [2, 4]
    assert all(np.isfinite(r["w1_to_real"]) and r["w1_to_real"] > 0 for r in curve)
    final = foreground_stats(ddpm_samples(params, tmp_path / "model.pt", 4, real.shape[1:], CPU), real)
    assert curve[-1]["w1_to_real"] == pytest.approx(final["w1_to_real"], abs=1e-7)
    assert ddpm_snapshot_curve(params, tmp_path / "nowhere", 4, real, CPU) == []
    # From published models (no snapshots) the curve measured at training time is reported.
    from lmid.evaluation.baselines import check_baselines

    model = tmp_path / "sdedit" / "model.pt"
    model.parent.mkdir()
    model.write_bytes((tmp_path / "model.pt").read_bytes())
    slice_set(8, seed=3).save(tmp_path / "test.npz")
    published = [{**curve[0], "step": 99}]
    out = check_baselines(
        params.model_copy(update={"methods": ["sdedit"]}),
        [model],
        tmp_path / "test.npz",
        tmp_path / "baselines.json",
        tmp_path / "samples.npz",
        samples=4,
        device="cpu",
        published_curves={"ddpm_snapshots": published},
    )
    assert out["methods"]["sdedit"]["snapshots"] == published
