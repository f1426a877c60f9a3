"""One contract for every registered method (the way one test class checks every scheduler).

Each method is trained tiny, through its own ``training_data`` and ``train``, then translated through
``load`` and ``translate``:

* the output is (N, H, W) float32, finite, in [0, 1];
* a slice's result does not depend on which other slices share its call (sharding and batching):
  translating the split whole or in two parts gives the same images;
* with several samples the scored image is sample 0, i.e. what one sample gives; mean and std
  come beside it;
* network evaluations are counted per slice and grow with the samples;
* a segmentation reference (``synthseg``) also returns its own labels: (N, H, W) uint8 in {0..3},
  the same however the split is cut and from one call to the next, with its source as the image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmid.config import Params
from lmid.methods import get_method
from lmid.registry import METHOD_NAMES, METHODS

from conftest import SIZE, slice_set

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Methods whose translation draws from per-slice seeds (several samples differ).
STOCHASTIC = {"lmidiffusion", "sdedit", "stylegan2", "cdm"}


def tiny_params() -> Params:
    """Every method at its smallest: seconds of training each, on 16-pixel slices."""
    diffusion = {
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
    }

    def tp(steps, bs):
        return {"steps": steps, "batch_size": bs, "lr": 2e-3, "checkpoint_every": steps, "log_every": 1}

    return Params.model_validate(
        {
            "seed": 21,
            "diffusion": diffusion,
            "lmidiffusion": {"sampler": {"kind": "ddim", "steps": 3, "spacing": "quad", "eta": 1.0, "batch_size": 3}},
            "sdedit": {
                "t0_grid": [0.3, 0.5],
                "repeats": 1,
                "val_slices": 2,
                "kind": "ddim",
                "steps": 3,
                "batch_size": 3,
            },
            "cyclegan": {
                "res_blocks": 1,
                "base_filters": 8,
                "disc_filters": 8,
                "disc_layers": 2,
                "pool_size": 2,
                "train": tp(4, 2),
            },
            "stylegan2": {
                "z_dim": 16,
                "w_dim": 16,
                "mapping_layers": 2,
                "channels": 16,
                "channel_base": 256,
                "r1_every": 4,
                "ema_decay": 0.9,
                "ada_kimg": 0.1,
                "invert_steps": 3,
                "invert_w_samples": 50,
                "train": tp(4, 4),
            },
            "cdm": {
                "vector_dim": 16,
                "patch": 8,
                "mask_ratio": 0.5,
                "mrm_channels": [8, 16],
                "unet_channels": [8, 16],
                "mdn_hidden": 32,
                "mdn_blocks": 1,
                "mdn_timesteps": 50,
                "mdn_ddim_steps": 3,
                "translate_batch_size": 2,
                "mrm": tp(3, 4),
                "mdn": tp(3, 8),
                "unet": tp(3, 4),
            },
            "synthseg": {
                "channels": [4, 8, 16],
                "num_res_units": 1,
                "translate_batch_size": 3,
                "train": {**tp(4, 2), "snapshot_every": 2, "ema_decay": 0.5},
            },
        }
    )


@pytest.fixture(scope="module", params=METHOD_NAMES)
def trained(request, tmp_path_factory):
    name = request.param
    params = tiny_params()
    method = get_method(name)
    out = tmp_path_factory.mktemp(name)
    train, val = slice_set(6), slice_set(2, seed=1)
    method.train(params, method.training_data(params, train), val, out, CPU)
    path = out / "model.pt"
    model = method.load(params, path if path.is_file() else None, CPU)
    return name, params, method, model


def _translate(trained, source, seeds, samples=1):
    name, params, method, model = trained
    return method.translate(params, model, source, seeds, CPU, samples=samples)


def test_output_shape_dtype_and_range(trained):
    test = slice_set(5, seed=2)
    seeds = np.arange(100, 105)
    out = _translate(trained, test.source, seeds)
    assert out.image.shape == (5, SIZE, SIZE) and out.image.dtype == np.float32
    assert np.all(np.isfinite(out.image)) and out.image.min() >= 0.0 and out.image.max() <= 1.0
    if METHODS[trained[0]].segments:
        assert out.labels is not None and out.labels.shape == (5, SIZE, SIZE) and out.labels.dtype == np.uint8
        assert set(np.unique(out.labels)) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(out.image, test.source)  # it translates nothing
    else:
        assert out.labels is None


def test_same_result_however_the_split_is_cut(trained):
    test = slice_set(5, seed=2)
    seeds = np.arange(100, 105)
    whole = _translate(trained, test.source, seeds).image
    parts = np.concatenate(
        [_translate(trained, test.source[:2], seeds[:2]).image, _translate(trained, test.source[2:], seeds[2:]).image]
    )
    np.testing.assert_allclose(parts, whole, atol=1e-5, rtol=0)
    if METHODS[trained[0]].segments:
        whole = _translate(trained, test.source, seeds).labels
        cut = [_translate(trained, test.source[a:b], seeds[a:b]).labels for a, b in ((0, 1), (1, 4), (4, 5))]
        np.testing.assert_array_equal(np.concatenate(cut), whole)
        np.testing.assert_array_equal(_translate(trained, test.source, seeds + 1).labels, whole)  # deterministic


def test_sample_zero_is_scored_and_evaluations_are_counted(trained):
    name = trained[0]
    test = slice_set(3, seed=4)
    seeds = np.arange(7, 10)
    one = _translate(trained, test.source, seeds, samples=1)
    two = _translate(trained, test.source, seeds, samples=2)
    np.testing.assert_allclose(two.image, one.image, atol=1e-5, rtol=0)
    if name in STOCHASTIC:  # each sample is its own chain of network evaluations
        assert one.nfe > 0 and two.nfe == 2 * one.nfe
    else:  # one deterministic pass (CycleGAN's generator, the segmenter) or none (the references)
        assert one.nfe == two.nfe == (1 if name in ("cyclegan", "synthseg") else 0)
    if name in STOCHASTIC:
        assert two.std is not None and two.mean is not None and float(two.std.max()) > 0
        assert not np.allclose(two.mean, two.image)  # the mean is not what gets scored
