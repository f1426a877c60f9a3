"""StyleGAN2-ADA baseline: ADA controller, augmentations, networks, training, resume, inversion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmid.config import Params
from lmid.methods import Access, TrainingData, get_method
from lmid.methods.stylegan2_ada import AdaController, AugmentPipe
from lmid.methods.stylegan2_distances import mind_distance, parzen_nmi
from lmid.methods.stylegan2_projector import invert_lr_ramp
from lmid.networks.stylegan2 import Discriminator, Generator, ModulatedConv2d, init_stylegan


# One torch thread for these tiny networks (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(n: int, size: int, seed: int, reverse: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        brain = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.16
        cy, cx, r = rng.uniform(0.35, 0.65, 2).tolist() + [rng.uniform(0.08, 0.15)]
        tissue = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        out.append(brain * ((0.4 + 0.5 * tissue) if reverse else (0.8 - 0.5 * tissue)))
    return np.asarray(out, np.float32)


def tiny_params(**over) -> Params:
    sg = {
        "z_dim": 16,
        "w_dim": 16,
        "mapping_layers": 2,
        "channels": 16,
        "channel_base": 256,
        "r1_gamma": 0.1,
        "r1_every": 4,
        "ema_decay": 0.9,
        "ada_kimg": 0.1,
        "invert_steps": 12,
        "invert_w_samples": 200,
        "train": {"steps": 40, "batch_size": 4, "lr": 2.5e-3, "log_every": 4, "checkpoint_every": 20},
    }
    for k, v in over.items():
        if isinstance(v, dict):
            sg[k] = {**sg[k], **v}
        else:
            sg[k] = v
    return Params.model_validate({"seed": 5, "stylegan2": sg})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("stylegan2")
    data = TrainingData(target=blobs(8, 16, 0), source=None, paired=False)
    info = get_method("stylegan2").train(tiny_params(), data, None, out, torch.device("cpu"))
    return out, info


# ----------------------------------------------------------------------------------- ADA
def test_ada_controller_rises_falls_and_clamps():
    ada = AdaController(target=0.6, interval=4, kimg=0.5, batch_size=8)
    step = 8 * 4 / 500  # Δp = B · interval / (kimg · 1000)
    assert ada.adjust_step == pytest.approx(step)
    for i in range(1, 13):  # all reals judged real: r_t = 1 > 0.6 → p rises
        ada.accumulate(torch.full((8,), 3.0))
        ada.step()
        assert ada.p == pytest.approx(step * (i // 4))  # only every 4th step moves p
    assert ada.rt == 1.0
    state = ada.state_dict()
    for _ in range(4 * 100):  # long enough to hit the ceiling
        ada.accumulate(torch.ones(8))
        ada.step()
    assert ada.p == 1.0
    for _ in range(4 * 3):  # all reals judged fake: r_t = -1 → p falls by Δ per adjustment
        ada.accumulate(-torch.ones(8))
        ada.step()
    assert ada.p == pytest.approx(1.0 - 3 * step) and ada.rt == -1.0
    for _ in range(4 * 100):
        ada.accumulate(-torch.ones(8))
        ada.step()
    assert ada.p == 0.0  # clamped at 0
    restored = AdaController(0.6, 4, 0.5, 8)
    restored.load_state_dict(state)
    assert restored.p == pytest.approx(3 * step)


def test_ada_rate_covers_unit_interval_in_kimg():
    kimg, batch, interval = 1.6, 16, 4
    ada = AdaController(target=0.6, interval=interval, kimg=kimg, batch_size=batch)
    steps_needed = round(kimg * 1000 / batch)  # 1600 images: 100 steps at batch 16
    for i in range(steps_needed):
        ada.accumulate(torch.tensor([1.0, 1.0, 1.0, -1.0]))  # r_t = 0.5 < 0.6 ... falls (clamped)
        ada.step()
    assert ada.p == 0.0
    for i in range(steps_needed):
        ada.accumulate(torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0]))  # r_t = 0.6 → no change
        ada.step()
    assert ada.p == 0.0
    for i in range(steps_needed):
        ada.accumulate(torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0]))  # r_t = 0.75 > 0.6
        ada.step()
    assert ada.p == pytest.approx(1.0, abs=1e-9)  # 0 → 1 in exactly kimg thousand images


def test_augment_pipe_identity_at_p0_and_differentiable():
    pipe = AugmentPipe()
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    assert torch.equal(pipe(x, 0.0, torch.Generator().manual_seed(0)), x)
    xr = x.clone().requires_grad_(True)
    y = pipe(xr, 1.0, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(y, x)
    y.square().sum().backward()
    assert torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0
    again = pipe(x, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(again, y.detach())  # seeded


# ------------------------------------------------------------------------------- networks
def test_networks_shapes_and_demodulation():
    g = Generator(16, 16, 2, 16, 16, 256)
    d = Discriminator(16, 16, 256)
    gen = torch.Generator().manual_seed(0)
    init_stylegan(g, gen)
    init_stylegan(d, gen)
    assert g.num_ws == 6 and len(g.synthesis.noise_res) == 5
    z = torch.randn(6, 16, generator=gen)
    img = g(z, g.synthesis.make_noise(6, gen))
    assert img.shape == (6, 1, 16, 16)
    assert d(img).shape == (6,)  # minibatch-std with a group that divides 6
    conv = ModulatedConv2d(4, 4, 3, 8, act=False)
    init_stylegan(conv, gen)
    x, w = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 8, generator=gen)
    y1 = conv(x, w)
    with torch.no_grad():  # scaling every style by 3 changes nothing after demodulation
        conv.affine.weight.mul_(3)
        conv.affine.bias.mul_(3)
    assert torch.allclose(conv(x, w), y1, atol=1e-5)


def test_paper_generator_size():
    p = Params().stylegan2
    g = Generator(p.z_dim, p.w_dim, p.mapping_layers, 128, p.channels, p.channel_base)
    n = sum(q.numel() for q in g.parameters())
    # 128 px, channel_base 16384, max 512 (the reference "auto" configuration): about 20 M.
    assert 15e6 < n < 25e6, n


# ------------------------------------------------------------------------------- training
def test_training_runs_and_discriminator_separates(trained):
    out, info = trained
    assert get_method("stylegan2").access is Access.TARGET_ONLY
    lines = (out / "train_log.csv").read_text().splitlines()
    assert lines[0] == "step,loss_g,loss_d,r1,d_real,d_fake,ada_p,ada_rt"
    rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert len(rows) == 10 and np.isfinite(rows[:, 1:3]).all()
    # At the start D knows nothing: its logistic loss is near 2 ln 2. It then learns to tell
    # reals from fakes: lower loss and positive real-minus-fake logit margin.
    assert abs(rows[0, 2] - 2 * math.log(2)) < 0.35
    assert rows[-3:, 2].mean() < 2 * math.log(2)
    assert (rows[-3:, 4] - rows[-3:, 5]).mean() > 0
    assert ((rows[:, 6] >= 0) & (rows[:, 6] <= 1)).all() and rows[:, 6].max() > 0  # p moved
    assert info["steps"] == 40 and info["nfe_per_slice"] == 12


def test_each_training_step_moves_only_its_own_networks():
    """G's step leaves D alone, D's step and lazy R1 leave G alone, and the EMA generator starts
    as G (the ramp-up makes β ≈ 0 after one step) and then lags it (β = ema_decay)."""
    from lmid.methods.stylegan2 import StyleGan2, TrainingRun

    params = tiny_params()
    run = TrainingRun(params, StyleGan2.arch(params, 16), torch.device("cpu"))

    def weights(net):
        return [q.detach().clone() for q in net.parameters()]

    def moved(before, net):
        return any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))

    real = torch.as_tensor(blobs(4, 16, 0) * 2 - 1)[:, None]
    g0, d0 = weights(run.g), weights(run.d)
    loss_g = run.generator_step(4)
    assert moved(g0, run.g) and not moved(d0, run.d) and torch.isfinite(loss_g)
    g1 = weights(run.g)
    loss_d, logit_r, logit_f = run.discriminator_step(real)
    assert moved(d0, run.d) and not moved(g1, run.g) and logit_r.shape == logit_f.shape == (4,)
    assert math.isnan(run.last_r1)
    d1 = weights(run.d)
    run.r1_step(real)
    assert run.last_r1 > 0 and moved(d1, run.d) and not moved(g1, run.g)
    run.update_ema(steps_done=1)  # β = min(0.9, 0.5 ** (1 / 0.05)) ≈ 1e-6
    assert all(torch.allclose(e, q, atol=1e-5) for e, q in zip(run.g_ema.parameters(), run.g.parameters()))
    e1 = weights(run.g_ema)
    run.generator_step(4)
    run.update_ema(steps_done=10_000)  # β = ema_decay = 0.9
    for e_old, e, q in zip(e1, run.g_ema.parameters(), run.g.parameters()):
        torch.testing.assert_close(e, 0.9 * e_old + 0.1 * q.detach())


# ------------------------------------------------------------------------------ inversion
def test_inversion_distances():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 16, 16, generator=gen)
    noise = torch.rand(2, 1, 16, 16, generator=gen)
    # Invariant to a monotone or reversed intensity mapping, low for an unrelated image.
    assert torch.allclose(parzen_nmi(a, 1 - a), parzen_nmi(a, a), atol=1e-4)
    assert (parzen_nmi(a, a) > 3 * parzen_nmi(a, noise)).all()
    assert torch.allclose(mind_distance(a, 0.5 * (1 - a) + 0.2), torch.zeros(2), atol=1e-5)
    assert (mind_distance(a, noise) > 0.1).all()
    assert invert_lr_ramp(0.0) == 0.0 and invert_lr_ramp(0.5) == 1.0 and invert_lr_ramp(0.999) < 0.01


def test_translate_shape_range_seeded_per_slice(trained):
    out, _ = trained
    torch.load(out / "model.pt", weights_only=True)
    method = get_method("stylegan2")
    params = tiny_params()
    model = method.load(params, out / "model.pt", torch.device("cpu"))
    src = blobs(3, 16, 9, reverse=True)
    seeds = np.array([11, 22, 33])
    res = method.translate(params, model, src, seeds, torch.device("cpu"))
    assert res.image.shape == (3, 16, 16) and res.image.dtype == np.float32
    assert res.image.min() >= 0 and res.image.max() <= 1 and res.nfe == 12
    assert "MIND" in res.info["inversion_loss"]
    trace = res.info["inversion_distance_trace"]
    assert trace[max(trace)] < trace[0]  # the distance falls during the inversion
    alone = method.translate(params, model, src[2:], seeds[2:], torch.device("cpu"))
    np.testing.assert_allclose(alone.image[0], res.image[2], atol=2e-3)  # batching: float rounding only


def test_translate_with_local_mi_loss(trained):
    out, _ = trained
    method = get_method("stylegan2")
    params = tiny_params(invert_loss="lmi_mind", invert_steps=2)
    model = method.load(params, out / "model.pt", torch.device("cpu"))
    res = method.translate(params, model, blobs(1, 16, 3, reverse=True), np.array([1]), torch.device("cpu"))
    assert res.image.shape == (1, 16, 16) and np.isfinite(res.image).all() and "LMI" in res.info["inversion_loss"]
