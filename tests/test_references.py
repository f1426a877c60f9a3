"""The cheap references: identity returns the source; histmatch maps onto the target histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmid.checkpoint import load_checkpoint
from lmid.config import parse_params
from lmid.data.slices import SliceSet
from lmid.methods import Access, get_method
from lmid.methods.references import match_to_quantiles, reference_quantiles

CPU = torch.device("cpu")


def disc_slices(n: int, size: int = 48, seed: int = 0) -> SliceSet:
    """Disc 'brains' whose intensities follow one skewed distribution inside [0.1, 0.9]; 0 outside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    mask = np.broadcast_to((xx**2 + yy**2) < 0.8, (n, size, size)).copy()
    values = 0.1 + 0.8 * rng.beta(2.0, 5.0, size=(n, size, size))
    target = np.where(mask, values, 0).astype(np.float32)
    return SliceSet(
        source=target.copy(),
        target=target,
        mask=mask,
        label=np.zeros(target.shape, np.uint8),
        subject=np.array([f"S{i}" for i in range(n)]),
        slice_index=np.arange(n),
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    params = parse_params({"histmatch": {"n_quantiles": 128, "mask_threshold": 0.01}})
    train = disc_slices(8, seed=0)
    method = get_method("histmatch")
    out = tmp_path_factory.mktemp("histmatch")
    info = method.train(params, method.training_data(params, train), train.subset(np.arange(0)), out, CPU)
    return params, method, method.load(params, out / "model.pt", CPU), info, train


def test_access_declarations():
    assert get_method("identity").access is Access.NONE
    assert get_method("histmatch").access is Access.TARGET_HISTOGRAM


def test_identity_returns_the_source_exactly(tmp_path):
    params = parse_params({})
    method = get_method("identity")
    data = disc_slices(3)
    training = method.training_data(params, data)
    assert training.target is None and training.source is None
    method.train(params, training, data, tmp_path, CPU)
    assert load_checkpoint(tmp_path / "model.pt") == {"method": "identity"}
    model = method.load(params, tmp_path / "model.pt", CPU)
    source = np.random.default_rng(0).random((3, 16, 16), dtype=np.float32)
    tr = method.translate(params, model, source, np.arange(3), CPU)
    assert np.array_equal(tr.image, source) and tr.image is not source and tr.nfe == 0
    assert method.load(params, None, CPU) is None  # the runner may pass no model


def test_histmatch_stores_target_brain_quantiles(fitted):
    params, method, model, info, train = fitted
    brain = train.target[train.mask]
    np.testing.assert_allclose(model["quantiles"], np.quantile(brain, model["levels"]), atol=1e-6)
    assert len(model["levels"]) == 128 and info["brain_voxels"] == brain.size


@pytest.mark.parametrize("remap", ["inverted", "monotone"])
def test_histmatch_maps_onto_the_target_histogram(fitted, remap):
    params, method, model, info, train = fitted
    test = disc_slices(3, seed=5)
    brain = test.mask
    if remap == "inverted":  # contrast inversion (PD-like CSF bright where T1 is dark)
        source = np.where(brain, 1.0 - test.target, 0)
    else:  # a monotone increasing, non-linear remap
        source = np.where(brain, 0.05 + 0.9 * test.target**2, 0)
    source = source.astype(np.float32)
    out = method.translate(params, model, source, np.arange(3), CPU).image
    assert out.shape == source.shape and out.min() >= 0 and out.max() <= 1
    assert np.all(out[~brain] == 0), "background must stay 0"
    levels = np.linspace(0.02, 0.98, 25)
    for i in range(3):
        # Each slice's brain histogram now follows the stored training histogram ...
        got = np.quantile(out[i][brain[i]], levels)
        want = np.interp(levels, model["levels"], model["quantiles"])
        np.testing.assert_allclose(got, want, atol=0.01)
        # ... and the untouched source histogram did not.
        assert np.abs(np.quantile(source[i][brain[i]], levels) - want).max() > 0.05
    if remap == "monotone":  # an increasing remap is undone pixel by pixel
        assert np.abs(out - test.target)[brain].mean() < 0.01


def test_quantile_mapping_ties_and_empty():
    levels, q = reference_quantiles(np.linspace(0, 1, 101), 11)
    assert match_to_quantiles(np.array([], np.float32), levels, q).size == 0
    mapped = match_to_quantiles(np.array([0.3, 0.3, 0.3, 0.3]), levels, q)
    assert np.all(mapped == mapped[0]) and abs(mapped[0] - 0.5) < 1e-6  # ties share the middle quantile
    mapped = match_to_quantiles(np.array([5.0, 1.0, 3.0]), levels, q)
    assert mapped[1] < mapped[2] < mapped[0]  # monotone increasing


def test_histmatch_empty_slice_stays_zero(fitted):
    params, method, model, info, train = fitted
    out = method.translate(params, model, np.zeros((1, 8, 8), np.float32), np.arange(1), CPU).image
    assert np.all(out == 0)
