"""CycleGAN baseline: reference-sized networks, what it may see, training, resume, translation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmid.checkpoint import load_checkpoint
from lmid.config import Params
from lmid.data.slices import SliceSet
from lmid.errors import InputFileError, ParamsError
from lmid.methods import Access, TrainingData, get_method
from lmid.networks.cyclegan import ImagePool, PatchDiscriminator, ResnetGenerator


# One torch thread for these tiny networks (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired toy 'T1' and 'PD' slices: a bright disc with darker blobs; PD has reversed contrast."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    t1, pd = [], []
    for _ in range(n):
        brain = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.16
        tissue = np.zeros((size, size))
        for _ in range(3):
            cy, cx, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.05, 0.12)]
            tissue += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        tissue = np.clip(tissue, 0, 1)
        t1.append(brain * (0.8 - 0.5 * tissue))
        pd.append(brain * (0.4 + 0.5 * tissue))
    return np.asarray(t1, np.float32), np.asarray(pd, np.float32)


def tiny_params(**train) -> Params:
    return Params.model_validate(
        {
            "seed": 3,
            "cyclegan": {
                "res_blocks": 1,
                "base_filters": 8,
                "disc_filters": 8,
                "disc_layers": 2,
                "pool_size": 4,
                "train": {"steps": 30, "batch_size": 2, "lr": 1e-3, "log_every": 5, "checkpoint_every": 10, **train},
            },
        }
    )


@pytest.fixture(scope="module")
def data() -> TrainingData:
    t1, _ = blobs(8, 32, 0)
    _, pd = blobs(3, 32, 1)  # unpaired: other anatomies
    return TrainingData(target=t1, source=pd, paired=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("cyclegan")
    info = get_method("cyclegan").train(tiny_params(), data, None, out, torch.device("cpu"))
    return out, info


def test_reference_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # The reference's resnet_9blocks / basic PatchGAN on RGB print 11.378 M / 2.765 M parameters.
    assert count(ResnetGenerator(3, 3, 64, 9)) == 11_378_179
    assert count(PatchDiscriminator(3, 64, 3)) == 2_764_737
    # The paper configuration here: 6 blocks at 128 px, one channel in and out.
    nets = get_method("cyclegan").build(Params(), torch.Generator().manual_seed(0))
    assert count(nets["g_ab"]) == 7_825_153
    assert count(nets["d_a"]) == 2_762_689
    # N(0, 0.02) initialisation.
    w = nets["g_ab"].net[1].weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.002 and float(nets["g_ab"].net[1].bias.detach().abs().max()) == 0


def test_access_only_training_source_slices_and_fraction():
    method = get_method("cyclegan")
    assert method.access is Access.TARGET_AND_SOURCE_FRACTION
    n = 100
    rng = np.random.default_rng(0)
    train = SliceSet(
        source=rng.random((n, 8, 8), dtype=np.float32),
        target=rng.random((n, 8, 8), dtype=np.float32),
        mask=np.ones((n, 8, 8), bool),
        label=np.zeros((n, 8, 8), np.uint8),
        subject=np.repeat([f"S{i}" for i in range(10)], 10),
        slice_index=np.tile(np.arange(10), 10),
    )
    test_source = rng.random((20, 8, 8), dtype=np.float32)
    params = Params()
    got = method.training_data(params, train)
    assert not got.paired
    assert len(got.source) == round(params.cyclegan.source_fraction * n) == 11
    rows = {train.source[i].tobytes(): i for i in range(n)}
    picked = [rows.get(s.tobytes()) for s in got.source]
    assert None not in picked and len(set(picked)) == len(picked)  # distinct training-split slices
    assert not {s.tobytes() for s in test_source} & {s.tobytes() for s in got.source}
    assert set(got.source_subjects) == set(train.subject[picked])
    assert np.array_equal(got.target, train.target)  # all target slices, unpaired


def test_cycle_loss_decreases_and_log(trained):
    out, info = trained
    lines = (out / "train_log.csv").read_text().splitlines()
    assert lines[0] == "step,lr,g_gan,cycle,identity,d_a,d_b"
    rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert rows[:, 0].tolist() == [5, 10, 15, 20, 25, 30]
    assert rows[-1, 3] < 0.8 * rows[0, 3], rows[:, 3]  # cycle-consistency L1
    assert rows[-1, 1] < rows[0, 1]  # learning rate decays
    assert info["steps"] == 30 and info["nfe_per_slice"] == 1 and info["source_slices_seen"] == 3


def test_translate_shape_range_and_weights_only(trained, data):
    out, _ = trained
    torch.load(out / "model.pt", weights_only=True)
    state = load_checkpoint(out / "model.pt")
    assert state["arch"] == {"in_ch": 1, "out_ch": 1, "ngf": 8, "n_blocks": 1}
    method = get_method("cyclegan")
    model = method.load(tiny_params(), out / "model.pt", torch.device("cpu"))
    src = np.concatenate([data.source, data.source[:1]])[:, :, :28]  # 4 slices, width not a multiple of 4
    res = method.translate(tiny_params(), model, src, np.arange(4), torch.device("cpu"))
    assert res.image.shape == src.shape and res.image.dtype == np.float32
    assert res.image.min() >= 0 and res.image.max() <= 1 and res.nfe == 1


def test_load_other_architecture_names_file(trained, tmp_path):
    out, _ = trained
    state = load_checkpoint(out / "model.pt")
    state["arch"]["n_blocks"] = 2
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(InputFileError, match="model.pt"):
        get_method("cyclegan").load(tiny_params(), tmp_path / "model.pt", torch.device("cpu"))


def test_image_pool_history():
    gen = torch.Generator().manual_seed(0)
    pool = ImagePool(2)
    first = pool.query(torch.zeros(2, 1, 4, 4), gen)
    assert torch.equal(first, torch.zeros(2, 1, 4, 4)) and len(pool.images) == 2
    seen = torch.cat([pool.query(torch.ones(1, 1, 4, 4), gen) for _ in range(20)])
    assert 0 < int((seen.amax(dim=(1, 2, 3)) == 0).sum()) < 20  # some old images come back
    restored = ImagePool(0)
    restored.load_state_dict(pool.state_dict())
    assert len(restored.images) == 2 and restored.size == 2


def test_too_small_slices_are_a_params_error(tmp_path):
    t1, pd = blobs(2, 16, 0)
    params = Params.model_validate({"cyclegan": {"train": {"steps": 1}}})
    with pytest.raises(ParamsError, match="disc_layers"):
        get_method("cyclegan").train(
            params, TrainingData(target=t1, source=pd, paired=False), None, tmp_path, torch.device("cpu")
        )
