"""The diffusion building blocks: schedule, U-Net, trainer (loss, resume, augmentation)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from lmid.checkpoint import load_checkpoint
from lmid.config import DiffusionParams, LmiParams, ScheduleParams, UNetParams
from lmid.diffusion.model import DiffusionModel
from lmid.diffusion.sampler import ancestral_coefficients
from lmid.diffusion.schedule import NoiseSchedule
from lmid.diffusion.trainer import DiffusionTrainer, LmiDiffusionTrainer, gaussian_blur
from lmid.diffusion.unet import build_unet
from lmid.networks import count_parameters

CPU = torch.device("cpu")


# One torch thread for these tiny networks (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_diffusion(**train) -> DiffusionParams:
    return DiffusionParams.model_validate(
        {
            "schedule": {"timesteps": 50},
            "unet": {
                "channels": [8, 16],
                "attention_levels": [False, True],
                "num_res_blocks": 1,
                "num_head_channels": 8,
                "norm_num_groups": 4,
                "dropout": 0.1,
            },
            "train": {
                "steps": 8,
                "batch_size": 4,
                "lr": 1e-3,
                "checkpoint_every": 4,
                "log_every": 1,
                "ema_decay": 0.9,
                **train,
            },
        }
    )


def blobs(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """Smooth test images in [0, 1]: a bright disc of random centre and radius on a dark ground."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        r = rng.uniform(size * 0.15, size * 0.35)
        out[i] = 0.2 + 0.6 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    return out


# ------------------------------------------------------------------------------------ schedule
def test_schedule_golden_values():
    s = NoiseSchedule(ScheduleParams())  # T = 1000, linear β 1e-4 → 0.02
    # Independent computation: β_t = 1e-4 + t·(0.02 − 1e-4)/999, ᾱ_t = ∏ (1 − β_s), plain loop.
    abar, expected = 1.0, {}
    for t in range(1000):
        abar *= 1.0 - (1e-4 + t * (0.02 - 1e-4) / 999)
        if t in (0, 499, 999):
            expected[t] = abar
    for t, value in expected.items():
        assert s.alphas_cumprod[t] == pytest.approx(value, rel=1e-12)
    # Pinned numbers (a refactor that changes them is caught).
    assert s.alphas_cumprod[0] == pytest.approx(0.9999, rel=1e-12)
    assert s.alphas_cumprod[499] == pytest.approx(0.07858724288177824, rel=1e-10)
    assert s.alphas_cumprod[999] == pytest.approx(4.035829765375676e-05, rel=1e-8)
    # MONAI's schedule (float32) agrees.
    assert np.allclose(s.monai.alphas_cumprod.numpy(), s.alphas_cumprod, rtol=1e-4)
    # The authors' "fixed large" variance: β_t, index 0 replaced by the posterior variance β̃_1.
    var = s.fixed_large_variance()
    assert np.array_equal(var[1:], s.betas[1:])
    assert var[0] == pytest.approx(s.betas[1] * (1 - s.alphas_cumprod[0]) / (1 - s.alphas_cumprod[1]))


def test_full_ancestral_chain_is_the_authors():
    """Every index, 999 → 0: β'_t = β_t and σ² = the authors' fixedlarge log-variance."""
    s = NoiseSchedule(ScheduleParams())
    seq = s.timesteps(999, 1000)
    coef = ancestral_coefficients(s, seq)
    t = np.array(seq)
    assert np.allclose(coef["beta"], s.betas[t], rtol=1e-9, atol=0)
    assert np.allclose(coef["var"], s.fixed_large_variance()[t], rtol=1e-9, atol=0)
    # Mean coefficient of the authors' step: β_t / √(1 − ᾱ_t) and 1 / √α_t.
    assert np.allclose(coef["eps"], s.betas[t] / np.sqrt(1 - s.alphas_cumprod[t]), rtol=1e-9)
    assert np.allclose(coef["scale"], 1 / np.sqrt(s.alphas[t]), rtol=1e-9)


def test_ddim_with_oracle_noise_recovers_x0():
    """If ε_θ returns the true ε, deterministic DDIM lands exactly on x_0 (any step count)."""
    from lmid.diffusion.sampler import ChainNoise, ddim

    s = NoiseSchedule(ScheduleParams(timesteps=100))
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 8, 8, generator=g)
    eps = torch.randn(2, 1, 8, 8, generator=g)
    start = 80
    x = s.add_noise(x0, eps, torch.tensor([start, start]))
    for steps in (1, 5, 81):
        out = ddim(lambda x_t, t: eps, s, x, s.timesteps(start, steps), ChainNoise([1, 2], CPU), eta=0.0)
        assert torch.allclose(out, x0, atol=1e-5)


def test_add_noise_and_timesteps():
    s = NoiseSchedule(ScheduleParams(timesteps=100))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 4, 4, generator=g)
    eps = torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([0, 50, 99])
    xt = s.add_noise(x0, eps, t)
    for i in range(3):
        a = s.alphas_cumprod[int(t[i])]
        assert torch.allclose(xt[i], np.sqrt(a) * x0[i] + np.sqrt(1 - a) * eps[i], atol=1e-5)
    assert s.timesteps(99, 1000) == list(range(99, -1, -1))
    seq = s.timesteps(99, 10)
    assert seq[0] == 99 and seq[-1] == 0 and len(seq) == 10 and all(a > b for a, b in zip(seq, seq[1:]))
    assert s.timesteps(99, 1) == [99]
    assert s.index_of_fraction(0.4) == 39 and s.index_of_fraction(1.0) == 99


# ------------------------------------------------------------------------------------ U-Net
def test_paper_unet_parameter_count():
    net = build_unet(UNetParams(), in_channels=3, out_channels=1)  # the paper preset
    n = count_parameters(net)
    assert n == 8_950_913
    assert abs(n - 8.95e6) / 8.95e6 < 0.01
    assert net.conv_in.conv.in_channels == 3


def test_unet_dropout_only_in_training():
    torch.manual_seed(0)
    net = build_unet(tiny_diffusion().unet, in_channels=1)
    # MONAI zero-initialises each block's conv2; give it weights so dropout shows.
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.rand(2, 1, 16, 16), torch.tensor([3, 7])
    net.eval()
    assert torch.equal(net(x, t), net(x, t))
    net.train()
    assert not torch.equal(net(x, t), net(x, t))


def test_gaussian_blur_per_image():
    x = torch.zeros(2, 1, 17, 17)
    x[:, :, 8, 8] = 1.0
    y = gaussian_blur(x, torch.tensor([0.5, 1.5]), radius=5)
    assert torch.allclose(y.sum(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)  # mass kept away from borders
    assert y[1, 0, 8, 8] < y[0, 0, 8, 8]  # wider σ spreads more
    assert torch.allclose(y[:, :, 8], y[:, :, :, 8])  # isotropic


# ------------------------------------------------------------------------------------ trainer
def test_loss_falls(tmp_path):
    params = tiny_diffusion(steps=60)
    trainer = DiffusionTrainer(params, seed=3, out_dir=tmp_path, device=CPU)
    info = trainer.fit(blobs(12))
    losses = np.array(trainer.step_losses)
    assert len(losses) == 60 and info["steps"] == 60
    assert losses[-15:].mean() < 0.7 * losses[:15].mean()
    # The log file holds every step (log_every 1) and the final weights are the EMA's.
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 61))


def _weights(trainer) -> dict:
    return {
        **{f"m.{k}": v for k, v in trainer.net.state_dict().items()},
        **{f"e.{k}": v for k, v in trainer.ema.shadow.items()},
    }


@pytest.mark.parametrize("lmi", [False, True])
def test_resume_equals_uninterrupted(tmp_path, lmi):
    params = tiny_diffusion(steps=6, checkpoint_every=2)
    images = blobs(6)

    def make(folder):
        if lmi:
            return LmiDiffusionTrainer(params, LmiParams(), seed=5, out_dir=folder, device=CPU)
        return DiffusionTrainer(params, seed=5, out_dir=folder, device=CPU)

    straight = make(tmp_path / "a")
    straight.fit(images)
    interrupted = make(tmp_path / "b")
    interrupted.fit(images, stop_after=3)  # "killed" after step 3 (its checkpoint is at 3)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 3
    resumed = make(tmp_path / "b")
    resumed.fit(images)
    assert len(resumed.step_losses) == 3
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight.step_losses[3:] == resumed.step_losses
    # The loss log is whole after the resume.
    rows = list(csv.DictReader(open(tmp_path / "b" / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))


def test_lmi_trainer_input_channels(tmp_path):
    params = tiny_diffusion(steps=1)
    trainer = LmiDiffusionTrainer(params, LmiParams(), seed=1, out_dir=tmp_path, device=CPU)
    seen = []
    real = trainer.network_input

    def spy(x0, x_t, x_next, idx=None, variant=None):
        out = real(x0, x_t, x_next, idx, variant)
        seen.append((x0, x_t, x_next, out))
        return out

    trainer.network_input = spy
    trainer.fit(blobs(4))
    x0, x_t, x_next, inp = seen[0]
    from lmid.lmi import local_mutual_information

    assert inp.shape[1] == 3 and trainer.net.conv_in.conv.in_channels == 3
    assert torch.equal(inp[:, :1], x_t)
    assert torch.allclose(inp[:, 1:2], local_mutual_information(x0, x_next))
    assert torch.allclose(inp[:, 2:3], local_mutual_information(x0, x0))
    assert not torch.equal(x_t, x_next)


@pytest.mark.parametrize("blur_levels", [2, 0])
def test_cached_self_lmi_equals_recomputed(tmp_path, blur_levels):
    """LMI(x_0, x_0) from the per-slice cache is the map of the augmented slice, at every step,
    and training with and without the cache gives the same weights."""
    from lmid.lmi import local_mutual_information

    params = tiny_diffusion(steps=12, blur_levels=blur_levels, flip_prob=0.5, blur_prob=0.5)
    trainer = LmiDiffusionTrainer(params, LmiParams(), seed=3, out_dir=tmp_path / "a", device=CPU)
    seen = []
    real = trainer.network_input

    def spy(x0, x_t, x_next, idx=None, variant=None):
        out = real(x0, x_t, x_next, idx, variant)
        seen.append((x0, variant, out))
        return out

    trainer.network_input = spy
    trainer.fit(blobs(3))
    for x0, variant, inp in seen:
        assert torch.allclose(inp[:, 2:3], local_mutual_information(x0, x0), atol=1e-6)
    variants = torch.cat([v for _, v, _ in seen])
    assert (variants >= 0).all() if blur_levels else (variants >= -1).all()
    assert int(trainer._cached.sum()) >= 2  # some variants were cached ...
    assert len(seen) * 4 > int(trainer._cached.sum())  # ... and reused

    params = tiny_diffusion(steps=12, blur_levels=blur_levels, flip_prob=0.5, blur_prob=0.5, cache_self_lmi=False)
    plain = LmiDiffusionTrainer(params, LmiParams(), seed=3, out_dir=tmp_path / "b", device=CPU)
    plain.fit(blobs(3))
    for k, v in trainer.ema.shadow.items():
        assert torch.allclose(v, plain.ema.shadow[k], atol=1e-6), k


def test_model_file_roundtrip(tmp_path):
    params = tiny_diffusion(steps=2)
    trainer = DiffusionTrainer(params, seed=1, out_dir=tmp_path, device=CPU, method="sdedit")
    trainer.fit(blobs(4))
    model = trainer.inference_model()
    model.meta["t0"] = 0.3
    model.save(tmp_path / "model.pt")
    back = DiffusionModel.load(tmp_path / "model.pt", CPU, method="sdedit")
    assert back.meta["t0"] == 0.3 and back.schedule.T == 50 and back.in_channels == 1
    for k, v in trainer.ema.shadow.items():
        assert torch.equal(back.net.state_dict()[k], v)
    from lmid.errors import InputFileError

    with pytest.raises(InputFileError, match="not 'lmidiffusion'"):
        DiffusionModel.load(tmp_path / "model.pt", CPU, method="lmidiffusion")


def test_timestep_spacings():
    s = NoiseSchedule(ScheduleParams())
    for spacing in ("uniform", "quad", "trailing"):
        seq = s.timesteps(999, 10, spacing)
        assert seq[0] == 999 and seq == sorted(set(seq), reverse=True) and len(seq) <= 10
    assert s.timesteps(999, 10, "uniform")[-1] == 0 and s.timesteps(999, 10, "quad")[-1] == 0
    # quad: half of its steps below t = 250; uniform: a quarter of them
    assert sum(t < 250 for t in s.timesteps(999, 10, "quad")) >= 5
    assert sum(t < 250 for t in s.timesteps(999, 10, "uniform")) <= 3
    # trailing: equal strides from the start, the last step at stride - 1
    assert s.timesteps(999, 5, "trailing") == [999, 799, 599, 399, 199]
    assert s.timesteps(9, 20, "quad") == list(range(9, -1, -1))  # enough steps: every index
    with pytest.raises(ValueError, match="spacing"):
        s.timesteps(999, 10, "cosine")


def test_sampler_setting_strings():
    from lmid.config import EvaluateParams, parse_sampler_setting

    plain = {"eta": 0.0, "clip_x0": False}
    assert parse_sampler_setting("ddim-20-quad") == {"kind": "ddim", "steps": 20, "spacing": "quad", **plain}
    assert parse_sampler_setting("ancestral-1000") == {
        "kind": "ancestral",
        "steps": 1000,
        "spacing": "uniform",
        **plain,
    }
    assert parse_sampler_setting("ddim-25-quad-eta0.5") == {
        "kind": "ddim",
        "steps": 25,
        "spacing": "quad",
        "eta": 0.5,
        "clip_x0": False,
    }
    assert parse_sampler_setting("ancestral-1000-clip")["clip_x0"] is True
    assert parse_sampler_setting("ddim-10-eta1")["eta"] == 1.0
    for bad in (
        "ddim-0",
        "ddim-20-cosine",
        "plms-10",
        "ddim-20-clip",
        "ancestral-10-eta1",
        "ddim-5-eta2",
        "ddim-5-eta0.50",
        "ddim-5-clip-eta1",
    ):
        with pytest.raises(ValueError):
            parse_sampler_setting(bad)
    with pytest.raises(ValueError, match="sampler_settings"):
        EvaluateParams(sampler_settings=["ddim-20-cosine"])


def test_the_sampler_setting_pattern_and_its_spelling_are_written_once():
    """lmid/config.py defines what a sampler setting may be and how to spell it: the Snakefile's
    wildcard, the parser, the params check and the help of every --sampler option use them."""
    import re

    from lmid.cli import build_parser
    from lmid.config import SAMPLER_SETTING, SAMPLER_SETTING_HELP, EvaluateParams, parse_sampler_setting

    snakefile = (Path(__file__).resolve().parents[1] / "workflow" / "Snakefile").read_text()
    assert "    setting=SAMPLER_SETTING,\n" in snakefile
    for name, valid in [("ddim-20-quad", True), ("ancestral-1000-clip", True), ("ddim-25-eta0.5", True)] + [
        (bad, False) for bad in ("ddim-20-cosine", "plms-10", "ddim-0", "ddim-5-eta0.50", "ddim-5-clip-eta1")
    ]:
        assert bool(re.fullmatch(SAMPLER_SETTING, name)) == valid, name
    with pytest.raises(ValueError) as info:
        parse_sampler_setting("plms-10")
    assert str(info.value) == f"'plms-10' is not {SAMPLER_SETTING_HELP}"
    with pytest.raises(ValueError, match=re.escape(f"sampler_settings: 'plms-10' is not {SAMPLER_SETTING_HELP}")):
        EvaluateParams(sampler_settings=["plms-10"])
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("translate", "sampler-sweep"):
        (option,) = [a for a in commands[command]._actions if "--sampler" in a.option_strings]
        assert SAMPLER_SETTING_HELP in option.help, command


def test_training_fingerprint_ignores_run_length_and_sampler(tmp_path):
    """A longer run of the same configuration resumes; a change of what it learns does not."""
    from lmid.config import Params
    from lmid.methods.runner import training_fingerprint

    train = tmp_path / "train.npz"
    train.write_bytes(b"slices")
    base = Params()
    fp = training_fingerprint(base, "lmidiffusion", train)
    longer = base.model_copy(deep=True)
    dump = longer.model_dump()
    dump["diffusion"]["train"].update(steps=6000, checkpoint_every=7, snapshot_every=100)
    dump["lmidiffusion"]["sampler"].update(steps=20, spacing="quad")
    assert training_fingerprint(Params.model_validate(dump), "lmidiffusion", train) == fp
    dump["diffusion"]["train"]["lr"] = 1e-3
    assert training_fingerprint(Params.model_validate(dump), "lmidiffusion", train) != fp
    # SDEdit's t0 sweep runs after training and never changes the DDPM's weights.
    dump = base.model_dump()
    dump["sdedit"].update(t0_grid=[0.1, 0.2], repeats=1)
    assert training_fingerprint(Params.model_validate(dump), "sdedit", train) == training_fingerprint(
        base, "sdedit", train
    )
    dump = base.model_dump()
    dump["cyclegan"]["train"]["steps"] = 10  # CycleGAN's learning-rate decay depends on its length
    assert training_fingerprint(Params.model_validate(dump), "cyclegan", train) != training_fingerprint(
        base, "cyclegan", train
    )


# ------------------------------------------------------------------ recipe variants (diffusion.train)


def test_ema_warmup_follows_the_power_schedule():
    from lmid.diffusion.trainer import ema_decay

    assert ema_decay(1, 0.999, warmup=False) == 0.999
    assert ema_decay(1, 0.999, warmup=True) == pytest.approx(2 / 11)
    assert ema_decay(100, 0.999, warmup=True) == pytest.approx(101 / 110)
    assert ema_decay(10**6, 0.999, warmup=True) == 0.999
    # Weight of the initial parameters left after k steps: prod of the decays. Without warm-up it
    # is 0.999^1000 = 37 % at step 1,000; with it, 10 / (10 + k) until the cap, a few % at most.
    left_plain = np.prod([ema_decay(k, 0.999, False) for k in range(1, 1001)])
    left_warm = np.prod([ema_decay(k, 0.999, True) for k in range(1, 1001)])
    assert left_plain == pytest.approx(0.3677, abs=1e-3) and left_warm < 0.02


def test_learning_rate_warmup_and_cosine():
    from lmid.config import DiffusionTrainParams
    from lmid.diffusion.trainer import learning_rate

    tp = DiffusionTrainParams(steps=1000, lr=1e-3, lr_warmup_steps=100, lr_schedule="cosine", lr_min_fraction=0.1)
    assert learning_rate(0, tp) == pytest.approx(1e-5)
    assert learning_rate(99, tp) == pytest.approx(1e-3)
    assert learning_rate(100, tp) == pytest.approx(1e-3)
    assert learning_rate(550, tp) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half-way down the cosine
    assert learning_rate(999, tp) == pytest.approx(1e-4, rel=1e-4)
    lrs = [learning_rate(k, tp) for k in range(100, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    constant = DiffusionTrainParams(steps=1000, lr=1e-3)
    assert {learning_rate(k, constant) for k in (0, 500, 999)} == {1e-3}


def test_min_snr_weights_against_the_definition():
    from lmid.config import ScheduleParams
    from lmid.diffusion.schedule import NoiseSchedule
    from lmid.diffusion.trainer import min_snr_weights

    sched = NoiseSchedule(ScheduleParams())
    t = torch.tensor([0, 10, 100, 500, 999])
    w = min_snr_weights(sched, t, 5.0)
    for k, tk in enumerate(t.tolist()):
        snr = sched.abar(tk) / (1 - sched.abar(tk))
        assert float(w[k]) == pytest.approx(min(snr, 5.0) / snr, rel=1e-6)
    assert float(w[-1]) == pytest.approx(1.0)  # noisy end: SNR < γ, weight 1
    assert float(w[0]) < 1e-3  # nearly clean: down-weighted


def test_clipped_ancestral_equals_the_released_one_when_nothing_is_clipped():
    from lmid.config import ScheduleParams
    from lmid.diffusion import sampler as samplers
    from lmid.diffusion.schedule import NoiseSchedule

    sched = NoiseSchedule(ScheduleParams(timesteps=50))
    seq = sched.timesteps(49, 10, "uniform")
    x0 = torch.full((2, 1, 8, 8), 0.5, dtype=torch.float32)

    def oracle_eps(x, t):  # the ε that points exactly at x0 = 0.5: x̂_0 never leaves [0, 1]
        a = torch.as_tensor([sched.abar(int(k)) for k in t], dtype=torch.float32)[:, None, None, None]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    def bad_eps(x, t):  # an ε far too small: x̂_0 overshoots, the clip matters
        return torch.zeros_like(x)

    def run(eps_fn, clip):
        noise = samplers.ChainNoise([1, 2], torch.device("cpu"))
        start = noise.randn((1, 8, 8))
        return samplers.ancestral(eps_fn, sched, start, seq, noise, clip_x0=clip)

    torch.testing.assert_close(run(oracle_eps, True), run(oracle_eps, False), atol=1e-5, rtol=0)
    assert float((run(bad_eps, True) - run(bad_eps, False)).abs().max()) > 1e-2


def test_bf16_autocast_on_cpu_is_deterministic_and_close_to_fp32():
    from lmid.config import UNetParams
    from lmid.diffusion.unet import build_unet
    from lmid.networks import autocast, cpu_has_bf16, uses_bf16

    assert uses_bf16(torch.device("cpu"), True, cpu=True) == cpu_has_bf16()
    assert not uses_bf16(torch.device("cpu"), True, cpu=False)
    assert not uses_bf16(torch.device("cpu"), False, cpu=True)
    torch.manual_seed(0)
    net = build_unet(
        UNetParams(
            channels=(16, 16),
            attention_levels=(False, True),
            num_res_blocks=1,
            num_head_channels=16,
            norm_num_groups=8,
            dropout=0.0,
        ),
        in_channels=3,
    ).eval()
    with torch.no_grad():  # MONAI zero-initialises the output convolution: give it weights
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        ref = net(x, t)
        with autocast(torch.device("cpu"), True, cpu=True):
            a = net(x, t).float()
            b = net(x, t).float()
    assert torch.equal(a, b)
    # bf16 keeps 8 mantissa bits: the output moves by well under 1 % of its own scale.
    assert float((a - ref).pow(2).mean()) < 1e-2 * float(ref.pow(2).mean())
