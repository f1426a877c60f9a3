"""CDM (supervised upper bound): three training stages, MDN sampling, translation, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from lmid.checkpoint import load_checkpoint
from lmid.config import parse_params
from lmid.data.slices import SliceSet
from lmid.errors import ParamsError
from lmid.methods import Access, get_method
from lmid.methods import cdm as cdm_module
from lmid.networks.cdm import VectorDiffusion, masked_l2, random_patch_mask, standardise

CPU = torch.device("cpu")


# One torch thread for these tiny networks (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def phantom_slices(n: int, size: int = 32, seed: int = 0) -> SliceSet:
    """Ellipse 'brains' with WM core and CSF bar; target T1-like, source PD-like (contrast inverted)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    tgt = np.zeros((n, size, size), np.float32)
    src = np.zeros_like(tgt)
    mask = np.zeros(tgt.shape, bool)
    for i in range(n):
        a, b = rng.uniform(0.6, 0.85, 2)
        cx, cy = rng.uniform(-0.1, 0.1, 2)
        r = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2
        brain = r < 1
        lab = np.where(brain, 2, 0)
        lab = np.where(r < rng.uniform(0.3, 0.5), 3, lab)
        lab = np.where(brain & (np.abs(xx - cx) < 0.12) & (np.abs(yy - cy) < rng.uniform(0.2, 0.4)), 1, lab)
        t1 = np.choose(lab, [0, 0.2, 0.55, 0.85]) + rng.normal(0, 0.02, lab.shape)
        pd = np.choose(lab, [0, 0.95, 0.7, 0.5]) + rng.normal(0, 0.02, lab.shape)
        tgt[i] = np.clip(np.where(brain, t1, 0), 0, 1)
        src[i] = np.clip(np.where(brain, pd, 0), 0, 1)
        mask[i] = brain
    return SliceSet(
        source=src,
        target=tgt,
        mask=mask,
        label=np.zeros(tgt.shape, np.uint8),
        subject=np.array([f"S{i % 4}" for i in range(n)]),
        slice_index=np.arange(n),
    )


def tiny_params(mrm=24, mdn=300, unet=24, checkpoint_every=8, log_every=4, seed=3):
    def tp(steps, bs):
        return {
            "steps": steps,
            "batch_size": bs,
            "lr": 2e-3,
            "checkpoint_every": checkpoint_every,
            "log_every": log_every,
        }

    return parse_params(
        {
            "seed": seed,
            "cdm": {
                "vector_dim": 16,
                "patch": 8,
                "mask_ratio": 0.5,
                "mrm_channels": [8, 16],
                "unet_channels": [8, 16],
                "mdn_hidden": 64,
                "mdn_blocks": 2,
                "mdn_timesteps": 1000,
                "mdn_ddim_steps": 8,
                "translate_batch_size": 3,
                "mrm": tp(mrm, 4),
                "mdn": tp(mdn, 16),
                "unet": tp(unet, 4),
            },
        }
    )


@pytest.fixture(scope="module")
def data():
    return phantom_slices(16, seed=0), phantom_slices(4, seed=1)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    train, val = data
    params = tiny_params()
    method = get_method("cdm")
    out = tmp_path_factory.mktemp("cdm")
    info = method.train(params, method.training_data(params, train), val, out, CPU)
    model = method.load(params, out / "model.pt", CPU)
    return params, method, out, info, model


def _log(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_access_is_paired():
    assert get_method("cdm").access is Access.PAIRED


def test_every_stage_loss_falls_and_files_written(trained):
    params, method, out, info, model = trained
    for name in ("model.pt", "checkpoint.pt", "train_log.csv"):
        assert (out / name).is_file()
    rows = _log(out / "train_log.csv")
    stages = [r["stage"] for r in rows]
    assert stages == sorted(stages, key=cdm_module.STAGES.index), "stages logged out of order"
    for stage in cdm_module.STAGES:
        losses = [float(r["loss"]) for r in rows if r["stage"] == stage]
        assert len(losses) >= 3, stage
        assert losses[-1] < 0.7 * losses[0], f"{stage} loss did not fall: {losses}"
    assert info["supervised"] is True
    assert set(info["parameters"]) == {"mrm", "mdn", "unet"}
    assert info["val"]["mse_sampled_vector"] < info["val"]["mse_identity"]
    assert load_checkpoint(out / "checkpoint.pt")["stage"] == "done"


def test_mdn_samples_match_training_vectors(trained, data):
    params, method, out, info, model = trained
    train, _ = data
    z0 = cdm_module.mrm_vectors(model["mrm"], torch.from_numpy(train.target[:, None]))
    z = method.sample_vectors(params, model, np.arange(200), CPU)
    assert z.shape == (200, 1, params.cdm.vector_dim)
    z = z[:, 0]
    assert torch.isfinite(z).all()
    # Per sample: standardised like the MRM vectors.
    assert torch.allclose(z.mean(1), torch.zeros(200), atol=1e-4)
    assert torch.allclose(z.std(1, unbiased=False), torch.ones(200), atol=1e-3)
    # Across samples: centred on the training vectors, spread no wider than a few times theirs.
    m_train, m_sample = z0.mean(0), z.mean(0)
    assert np.corrcoef(m_train.numpy(), m_sample.numpy())[0, 1] > 0.95
    assert (m_train - m_sample).abs().mean() < 0.2
    assert z.std(0).mean() < 3 * z0.std(0).mean() + 0.05


def test_translation_shape_range_and_seed_determinism(trained, data):
    params, method, out, info, model = trained
    _, val = data
    seeds = np.array([11, 12, 13, 14])
    tr = method.translate(params, model, val.source, seeds, CPU)
    assert tr.image.shape == val.source.shape and tr.image.dtype == np.float32
    assert np.isfinite(tr.image).all() and tr.image.min() >= 0 and tr.image.max() <= 1
    assert tr.std is None
    assert tr.nfe == 1 + len(model["diffusion"].ddim_timesteps(params.cdm.mdn_ddim_steps))
    # A slice's result depends on its seed only, not on the batch it is translated in.
    one_by_one = np.stack(
        [
            method.translate(params, model, val.source[i : i + 1], seeds[i : i + 1], CPU).image[0]
            for i in range(len(seeds))
        ]
    )
    np.testing.assert_allclose(one_by_one, tr.image, atol=1e-5)
    again = method.translate(params, model, val.source[::-1].copy(), seeds[::-1].copy(), CPU).image[::-1]
    np.testing.assert_allclose(again, tr.image, atol=1e-5)
    multi = method.translate(params, model, val.source, seeds, CPU, samples=3)
    assert multi.std is not None and multi.std.shape == val.source.shape and multi.nfe == 3 * tr.nfe
    z1 = method.sample_vectors(params, model, np.array([1, 2]), CPU)
    assert not torch.equal(z1[0], z1[1])


def test_patch_mask_and_masked_loss():
    gen = torch.Generator().manual_seed(0)
    m = random_patch_mask(3, 32, 32, 8, 0.5, gen)
    assert m.shape == (3, 1, 32, 32)
    assert torch.all(m.mean(dim=(1, 2, 3)) == 0.5)  # 8 of the 16 patches, exactly
    recon, target = torch.zeros(3, 1, 32, 32), torch.ones(3, 1, 32, 32)
    recon[m.bool()] = 1.0  # perfect on the masked pixels, wrong elsewhere
    assert masked_l2(recon, target, m).item() == 0.0


def test_vector_diffusion_schedule_and_standardise():
    d = VectorDiffusion(1000)
    assert d.alpha_bar[0] > 0.999 and d.alpha_bar[-1] < 1e-3
    assert VectorDiffusion(50).alpha_bar[-1] < 1e-3  # scaled so short schedules still reach noise
    ts = d.ddim_timesteps(10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10
    v = standardise(torch.randn(5, 12) * 3 + 2)
    assert torch.allclose(v.mean(1), torch.zeros(5), atol=1e-5)


def test_slice_size_must_fit_the_levels(data, tmp_path):
    train, val = data
    params = tiny_params()
    method = get_method("cdm")
    odd = train.subset(np.arange(4))
    odd = SliceSet(
        source=odd.source[:, :30, :30].copy(),
        target=odd.target[:, :30, :30].copy(),
        mask=odd.mask[:, :30, :30].copy(),
        label=odd.label[:, :30, :30].copy(),
        subject=odd.subject,
        slice_index=odd.slice_index,
    )
    with pytest.raises(ParamsError, match="cdm.mrm_channels"):
        method.train(params, method.training_data(params, odd), val, tmp_path, CPU)
