"""LMIDiffusion: target-only training data, LMI conditioning, the samplers, batching invariance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmid.config import Params
from lmid.diffusion.trainer import LmiDiffusionTrainer
from lmid.lmi import local_mutual_information
from lmid.methods import get_method
from lmid.methods.lmidiffusion import LmiDiffusion, lmi_translate

from conftest import SIZE, slice_set

CPU = torch.device("cpu")


# One torch thread for these tiny networks (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_params(**sampler) -> Params:
    return Params.model_validate(
        {
            "seed": 11,
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
                "train": {"steps": 3, "batch_size": 2, "checkpoint_every": 3, "log_every": 1, "ema_decay": 0.5},
            },
            "lmidiffusion": {"sampler": {"kind": "ddim", "steps": 4, "samples": 1, "batch_size": 4, **sampler}},
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained LMIDiffusion model (through the method's train/load)."""
    out = tmp_path_factory.mktemp("lmid_model")
    params = tiny_params()
    method = get_method("lmidiffusion")
    train = slice_set(6)
    info = method.train(params, method.training_data(params, train), slice_set(2, seed=1), out, CPU)
    model = method.load(params, out / "model.pt", CPU)
    return params, method, model, info, out


def test_training_data_has_no_source(tmp_path, monkeypatch):
    params = tiny_params()
    train = slice_set(6)
    method = LmiDiffusion()
    data = method.training_data(params, train)
    assert data.source is None
    seen = {}
    real_fit = LmiDiffusionTrainer.fit

    def spy(self, images, stop_after=None):
        seen["images"] = np.array(images, copy=True)
        return real_fit(self, images, stop_after)

    monkeypatch.setattr(LmiDiffusionTrainer, "fit", spy)
    method.train(params, data, slice_set(2, seed=1), tmp_path, CPU)
    images = seen["images"]
    assert np.array_equal(images, train.target)
    # No source slice is among the training images.
    for s in train.source:
        assert not any(np.allclose(s, im) for im in images)


def test_train_writes_model_and_info(trained):
    params, method, model, info, out = trained
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file() and (out / "train_log.csv").is_file()
    assert info["steps"] == 3 and info["in_channels"] == 3 and info["parameters"] > 0
    # Network evaluations belong to the sampler, a translation setting: counted when translating.
    assert "nfe_per_slice" not in info
    out = method.translate(params, model, slice_set(1, seed=3).source, np.array([1]), CPU)
    assert out.nfe == 4 * params.lmidiffusion.sampler.samples
    assert model.in_channels == 3 and model.meta["lmi"]["mode"] == params.lmi.mode


@pytest.mark.parametrize("kind,steps", [("ddim", 4), ("ancestral", 1000)])
def test_translate_shapes_range_and_reproducible(trained, kind, steps):
    params, method, model, _, _ = trained
    p = tiny_params(kind=kind, steps=steps)
    source = slice_set(3, seed=2).source
    seeds = np.array([5, 6, 7])
    a = method.translate(p, model, source, seeds, CPU, samples=1)
    b = method.translate(p, model, source, seeds, CPU, samples=1)
    assert a.image.shape == (3, SIZE, SIZE) and a.image.dtype == np.float32
    assert a.image.min() >= 0.0 and a.image.max() <= 1.0
    assert np.array_equal(a.image, b.image)  # seeded: two runs identical
    assert a.std is None
    # Full ancestral chain = every one of the T = 40 timesteps.
    assert a.nfe == (4 if kind == "ddim" else 40)
    c = method.translate(p, model, source, seeds + 1, CPU, samples=1)
    assert not np.array_equal(a.image, c.image)  # the seeds matter


def test_samples_give_mean_and_std(trained):
    params, method, model, _, _ = trained
    p = tiny_params(kind="ddim", steps=3, eta=1.0)
    source = slice_set(2, seed=3).source
    out = method.translate(p, model, source, np.array([1, 2]), CPU, samples=3)
    assert out.image.shape == (2, SIZE, SIZE) and out.std.shape == (2, SIZE, SIZE)
    assert (out.std >= 0).all() and out.std.max() > 0
    assert out.image.min() >= 0 and out.image.max() <= 1
    assert out.nfe == 3 * 3
    # The scored image is chain 0 itself, not the (blurrier) mean of the chains.
    one = method.translate(p, model, source, np.array([1, 2]), CPU, samples=1)
    np.testing.assert_allclose(out.image, one.image, atol=1e-6)
    assert out.mean.shape == out.image.shape and not np.allclose(out.mean, out.image)


@pytest.mark.parametrize("spacing", ["uniform", "quad", "trailing"])
def test_spacing_sets_the_visited_timesteps(trained, spacing):
    params, _, model, _, _ = trained
    seen = []
    real = model.net.forward

    def spy(x, timesteps, *args, **kwargs):
        seen.append(int(timesteps[0]))
        return real(x, timesteps, *args, **kwargs)

    model.net.forward = spy
    try:
        sp = tiny_params(kind="ddim", steps=5, spacing=spacing).lmidiffusion.sampler
        out = lmi_translate(model, slice_set(1, seed=7).source, np.array([1]), sp, 1, CPU)
    finally:
        del model.net.forward
    assert seen == model.schedule.timesteps(39, 5, spacing)
    assert out.info["spacing"] == spacing


@pytest.mark.parametrize("kind,eta", [("ancestral", 0.0), ("ddim", 0.5)])
def test_result_independent_of_batching(trained, kind, eta):
    _, _, model, _, _ = trained
    source = slice_set(4, seed=4).source
    seeds = np.array([10, 20, 30, 40])
    sp_one = tiny_params(kind=kind, steps=5, eta=eta, batch_size=8).lmidiffusion.sampler
    sp_two = tiny_params(kind=kind, steps=5, eta=eta, batch_size=2).lmidiffusion.sampler
    one = lmi_translate(model, source, seeds, sp_one, 2, CPU)
    two = lmi_translate(model, source, seeds, sp_two, 2, CPU)
    assert np.allclose(one.image, two.image, atol=1e-5, rtol=0)
    assert np.allclose(one.std, two.std, atol=1e-5, rtol=0)
    # A shard of the last two slices alone gives the same as within the whole set.
    shard = lmi_translate(model, source[2:], seeds[2:], sp_two, 2, CPU)
    assert np.allclose(shard.image, one.image[2:], atol=1e-5, rtol=0)


def test_network_sees_lmi_conditioning(trained):
    params, _, model, _, _ = trained
    seen = []
    hook = model.net.conv_in.conv.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        source = slice_set(2, seed=5).source
        sp = tiny_params(kind="ddim", steps=3).lmidiffusion.sampler
        lmi_translate(model, source, np.array([1, 2]), sp, 1, CPU)
    finally:
        hook.remove()
    assert len(seen) == 3  # one network evaluation per step
    s = torch.as_tensor(source)[:, None]
    lmi_ss = local_mutual_information(
        s, s, mode=params.lmi.mode, window=params.lmi.window, bins=params.lmi.bins, sigma=params.lmi.sigma
    )
    for inp in seen:
        assert inp.shape == (2, 3, SIZE, SIZE)  # the first conv sees 3 channels
        assert torch.allclose(inp[:, 2:3], lmi_ss)  # channel 2 = LMI(s, s)
        assert torch.allclose(inp[:, 1:2], local_mutual_information(s, inp[:, :1]))  # channel 1 = LMI(s, x_t)
    assert not torch.equal(seen[0][:, 1], seen[-1][:, 1])  # LMI(s, x_t) recomputed every step


def test_start_from_source(trained):
    params, method, model, _, _ = trained
    p = tiny_params(kind="ancestral", steps=1000, start="source", start_t=0.25)
    out = method.translate(p, model, slice_set(2, seed=6).source, np.array([3, 4]), CPU)
    assert out.nfe == 10  # indices 9 … 0 of T = 40
    assert out.info["start"] == "source" and out.image.min() >= 0 and out.image.max() <= 1


def test_wrong_model_is_refused(trained, tmp_path):
    from lmid.errors import InputFileError

    params, method, _, _, out = trained
    with pytest.raises(InputFileError):
        get_method("sdedit").load(params, out / "model.pt", CPU)


def test_diagnose_ablation_oracle_and_convergence(tmp_path):
    """``lmid diagnose`` on a tiny model: a finite loss pair per timestep, oracle and source scores,
    and one convergence point per training snapshot (plus the final model)."""
    import json

    from lmid.evaluation.diagnostics import diagnose
    from lmid.evaluation.segment import KMeansSegmenter

    params = Params.model_validate(
        {
            **tiny_params().model_dump(),
            "diffusion": {
                **tiny_params().diffusion.model_dump(),
                "train": {**tiny_params().diffusion.train.model_dump(), "steps": 4, "snapshot_every": 2},
            },
        }
    )
    method = get_method("lmidiffusion")
    method.train(params, method.training_data(params, slice_set(6)), slice_set(2, seed=1), tmp_path, CPU)
    snaps = sorted((tmp_path / "snapshots").glob("step*.pt"))
    assert [p.name for p in snaps] == ["step0000002.pt", "step0000004.pt"]
    val = slice_set(4, seed=8)
    val.label[:] = np.where(val.target > 0.5, 3, 1)
    val.has_label = True
    val.save(tmp_path / "val.npz")
    seg = KMeansSegmenter(centroids=(0.2, 0.5, 0.8), mapping=(1, 2, 3))
    (tmp_path / "kmeans.json").write_text(json.dumps(seg.to_dict()))
    slice_set(5, seed=9).save(tmp_path / "unseen_val.npz")  # another protocol's split: its own slice count
    out = diagnose(
        params,
        tmp_path / "model.pt",
        snaps,
        tmp_path / "val.npz",
        tmp_path / "kmeans.json",
        tmp_path / "diag.json",
        slices=3,
        device="cpu",
        unseen_val_path=tmp_path / "unseen_val.npz",
    )
    back = json.loads((tmp_path / "diag.json").read_text())
    assert back["slices"] == 3 and len(back["ablation"]["timesteps"]) == 8
    for row in back["ablation"]["timesteps"]:
        assert row["loss_true"] > 0 and row["loss_shuffled"] > 0
    assert [r["step"] for r in back["convergence"]] == [2, 4]
    # The last snapshot is the final EMA model: its point equals the final model's score.
    assert back["convergence"][-1]["ssim"] == pytest.approx(back["source"]["ssim"], abs=1e-6)
    assert -1 <= out["oracle"]["ssim"] <= 1 and out["oracle"]["ssim"] != out["source"]["ssim"]
    # Every snapshot's scores are cached beside it: a second run loads no snapshot.
    assert len(list((tmp_path / "snapshots").glob("step*.curve-*.json"))) == 2
    from lmid.diffusion.model import DiffusionModel

    real_load = DiffusionModel.load
    loaded = []

    def counting_load(path, *a, **k):
        loaded.append(Path(path).name)
        return real_load(path, *a, **k)

    # Without a slice count, evaluate.diagnostic_slices of the params is used (3 here: the same slices).
    three = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"diagnostic_slices": 3})})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DiffusionModel, "load", counting_load)
        again = diagnose(
            three,
            tmp_path / "model.pt",
            snaps,
            tmp_path / "val.npz",
            tmp_path / "kmeans.json",
            tmp_path / "diag2.json",
            device="cpu",
        )
    assert loaded == ["model.pt"] and again["convergence"] == out["convergence"] and again["slices"] == 3
    # The command line passes no count of its own unless --slices is given.
    from lmid.cli import build_parser

    args = build_parser().parse_args(
        ["diagnose", "--model", "m.pt", "--val", "v.npz", "--segmenter", "k.json", "--out", "d.json"]
    )
    assert args.slices is None
    shift = back["conditioning_shift"]
    assert set(shift["training"]) == {"self", "low_t"} and "T1 (oracle)" in shift["sources"]
    assert shift["sources"]["PD (unseen protocol)"]["slices"] == 5
    # The oracle's LMI(s, s) is training's LMI(x_0, x_0) of the same slices.
    assert shift["sources"]["T1 (oracle)"]["self"]["mean"] == pytest.approx(shift["training"]["self"]["mean"])
    assert back["convergence_verdict"]["status"] == "too few snapshots"


def test_convergence_verdict_against_hand_made_curves():
    from lmid.evaluation.convergence import verdict

    def curve(values, half):
        return [
            {"step": 1000 * (k + 1), "dice_gt_mean": v, "dice_gt_mean_half_width": half} for k, v in enumerate(values)
        ]

    flat = verdict(curve([0.3, 0.5, 0.60, 0.61, 0.60, 0.605], 0.02), keys=("dice_gt_mean",))
    assert flat["from_step"] == 4000 and flat["to_step"] == 6000  # the last third: steps >= 4,000
    assert flat["scores"]["dice_gt_mean"]["state"] == "converged" and flat["converged"]
    rising = verdict(curve([0.3, 0.4, 0.5, 0.55, 0.6, 0.65], 0.02), keys=("dice_gt_mean",))
    assert rising["scores"]["dice_gt_mean"] == {"moved": pytest.approx(0.10), "half_width": 0.02, "state": "rising"}
    falling = verdict(curve([0.6, 0.6, 0.6, 0.6, 0.55, 0.5], 0.02), keys=("dice_gt_mean",))
    assert falling["scores"]["dice_gt_mean"]["state"] == "falling" and not falling["converged"]


def test_source_contrast_by_hand():
    from lmid.evaluation.convergence import source_contrast

    lab = np.array([[[1, 2, 3, 0]]])
    img = np.array([[[0.9, 0.5, 0.2, 0.0]]])
    mask = lab > 0
    assert source_contrast(img, lab, mask)[0] == pytest.approx(0.3 + 0.4)
    assert np.isnan(source_contrast(img, np.array([[[1, 1, 3, 0]]]), mask)[0])  # no GM


def test_sampler_sweep_spreads_slices_and_scores_every_chain(trained, tmp_path):
    """The sweep protocol: slices spread over the split (every subject), several chains each with
    its own seeds, chain 0 being exactly what translate would give; one CSV row per slice and chain."""
    import json

    from lmid.evaluation.metrics import read_metrics_csv
    from lmid.evaluation.segment import KMeansSegmenter
    from lmid.methods.runner import sweep_sampler

    params, _, _, _, out = trained
    val = slice_set(8, seed=5)  # subjects S0..S3, two slices each
    val.save(tmp_path / "val.npz")
    seg = KMeansSegmenter(centroids=(0.2, 0.5, 0.8), mapping=(1, 2, 3))
    (tmp_path / "kmeans.json").write_text(json.dumps(seg.to_dict()))
    args = (out / "model.pt", tmp_path / "val.npz", tmp_path / "manifest.json", tmp_path / "kmeans.json")
    # Output folders that do not exist yet (DVC runs a stage without making them).
    info = sweep_sampler(
        params,
        *args,
        tmp_path / "s" / "shard.npz",
        tmp_path / "t" / "tr.npz",
        tmp_path / "metrics" / "m.csv",
        limit=4,
        device="cpu",
        chains=2,
    )
    assert info["slices_picked"] == [0, 2, 5, 7]  # every subject, not the first two
    df = read_metrics_csv(tmp_path / "metrics" / "m.csv")
    assert sorted(df["chain"].unique()) == [0, 1] and len(df) == 8
    assert [p.name for p in (tmp_path / "metrics").iterdir()] == ["m.csv"]  # no work folder left behind
    assert sorted(set(df["subject"])) == ["S0", "S1", "S2", "S3"]
    assert sorted(set(df["index"])) == [0, 2, 5, 7]
    a, b = df[df.chain == 0].sort_values("index"), df[df.chain == 1].sort_values("index")
    assert not np.allclose(a["psnr"].to_numpy(), b["psnr"].to_numpy())  # chains draw their own noise
    one = sweep_sampler(
        params, *args, tmp_path / "s1.npz", tmp_path / "t1.npz", tmp_path / "m1.csv", limit=4, device="cpu", chains=1
    )
    assert one["slices_picked"] == info["slices_picked"]
    np.testing.assert_array_equal(
        read_metrics_csv(tmp_path / "m1.csv")["psnr"].to_numpy(), a.sort_index()["psnr"].to_numpy()
    )
