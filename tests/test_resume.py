"""Killed right after a checkpoint and started again, every trained method ends exactly where an
uninterrupted run ends: the same weights, optimiser and sampler states, the same loss log and the
same final loss, also when a checkpoint falls inside a row of the loss log."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from conftest import slice_set

from lmid.checkpoint import load_checkpoint
from lmid.config import Params
from lmid.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def _cdm_stage(steps, bs):
    return {"steps": steps, "batch_size": bs, "lr": 2e-3, "checkpoint_every": 3, "log_every": 2}


#: method, its tiny params, the module whose ``save_checkpoint`` is cut short, and the saved state
#: after which the run is killed.
def _tiny_diffusion(steps: int, log_every: int) -> dict:
    """The diffusion section of the tiny LMIDiffusion cases (checkpoints every 2 steps)."""
    return {
        "schedule": {"timesteps": 40},
        "unet": {
            "channels": [8, 16],
            "attention_levels": [False, True],
            "num_res_blocks": 1,
            "num_head_channels": 8,
            "norm_num_groups": 4,
            "dropout": 0.0,
        },
        "train": {"steps": steps, "batch_size": 2, "checkpoint_every": 2, "log_every": log_every, "ema_decay": 0.5},
    }


CASES = {
    "cyclegan": (
        "cyclegan",
        {
            "seed": 3,
            "cyclegan": {
                "res_blocks": 1,
                "base_filters": 8,
                "disc_filters": 8,
                "disc_layers": 2,
                "pool_size": 4,
                "source_fraction": 0.5,
                "train": {"steps": 8, "batch_size": 2, "lr": 1e-3, "log_every": 2, "checkpoint_every": 4},
            },
        },
        "lmid.methods.cyclegan",
        lambda s: s.get("step") == 4,
    ),
    "stylegan2": (
        "stylegan2",
        {
            "seed": 3,
            "stylegan2": {
                "z_dim": 16,
                "w_dim": 16,
                "mapping_layers": 2,
                "channels": 16,
                "channel_base": 256,
                "r1_gamma": 0.1,
                "r1_every": 4,
                "ema_decay": 0.9,
                "ada_kimg": 0.1,
                "train": {"steps": 10, "batch_size": 4, "lr": 2.5e-3, "log_every": 5, "checkpoint_every": 5},
            },
        },
        "lmid.methods.stylegan2",
        lambda s: s.get("step") == 5,
    ),
    **{
        f"cdm-{stage}": (
            "cdm",
            {
                "seed": 3,
                "cdm": {
                    "vector_dim": 16,
                    "patch": 8,
                    "mask_ratio": 0.5,
                    "mrm_channels": [8, 16],
                    "unet_channels": [8, 16],
                    "mdn_hidden": 32,
                    "mdn_blocks": 2,
                    "mdn_ddim_steps": 4,
                    "translate_batch_size": 3,
                    "mrm": _cdm_stage(6, 4),
                    "mdn": _cdm_stage(6, 16),
                    "unet": _cdm_stage(6, 4),
                },
            },
            "lmid.methods.cdm",
            lambda s, stage=stage: s.get("stage") == stage and s.get("step") == 3,
        )
        for stage in ("mrm", "mdn", "unet")
    },
    "lmidiffusion": (
        "lmidiffusion",
        {"seed": 11, "diffusion": _tiny_diffusion(steps=6, log_every=1)},
        "lmid.diffusion.trainer",
        lambda s: s.get("step") == 2,
    ),
    # Log rows of 3 steps, checkpoints every 2: killed at step 4, the row of steps 4-6 is half done
    # and the run ends (step 7) inside a row.
    "lmidiffusion-window": (
        "lmidiffusion",
        {"seed": 11, "diffusion": _tiny_diffusion(steps=7, log_every=3)},
        "lmid.diffusion.trainer",
        lambda s: s.get("step") == 4,
    ),
    # EMA on, log rows of 3 steps, checkpoints every 2: killed at step 4, inside a row.
    "synthseg": (
        "synthseg",
        {
            "seed": 3,
            "synthseg": {
                "channels": [4, 8, 16],
                "num_res_units": 1,
                "train": {
                    "steps": 7,
                    "batch_size": 2,
                    "lr": 1e-3,
                    "log_every": 3,
                    "checkpoint_every": 2,
                    "snapshot_every": 3,
                    "ema_decay": 0.5,
                },
            },
        },
        "lmid.methods.synthseg",
        lambda s: s.get("step") == 4,
    ),
    "cyclegan-window": (
        "cyclegan",
        {
            "seed": 3,
            "cyclegan": {
                "res_blocks": 1,
                "base_filters": 8,
                "disc_filters": 8,
                "disc_layers": 2,
                "pool_size": 4,
                "source_fraction": 0.5,
                "train": {"steps": 7, "batch_size": 2, "lr": 1e-3, "log_every": 3, "checkpoint_every": 2},
            },
        },
        "lmid.methods.cyclegan",
        lambda s: s.get("step") == 4,
    ),
}


class Killed(Exception):
    """Stands for the job being killed between two checkpoints."""


#: Entries allowed to differ: wall-clock and CPU times, and the process-wide torch generator (building the
#: networks of a resumed run draws from it before its saved state is loaded; each method trains
#: with its own seeded generator, and equal weights show that no step depends on the global one).
_UNCHECKED = ("wall", "seconds", "cpu_s", "torch_rng")


def _same(a, b, where="") -> None:
    """Recursive equality of two saved states, but for :data:`_UNCHECKED` entries."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            if not any(word in str(k) for word in _UNCHECKED):
                _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("case", list(CASES))
def test_resume_equals_uninterrupted(case, tmp_path, monkeypatch):
    name, tree, module, kill_after = CASES[case]
    params = Params.model_validate(tree)
    method = get_method(name)
    data = method.training_data(params, slice_set(8))
    val = slice_set(8, seed=1).subset(np.arange(0))
    straight = method.train(params, data, val, tmp_path / "straight", CPU) or {}

    mod = importlib.import_module(module)
    real_save = mod.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if path.name == "checkpoint.pt" and kill_after(state):
            raise Killed

    monkeypatch.setattr(mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        method.train(params, data, val, tmp_path / "resumed", CPU)
    assert not (tmp_path / "resumed" / "model.pt").exists()
    monkeypatch.undo()
    resumed = method.train(params, data, val, tmp_path / "resumed", CPU) or {}

    for f in ("checkpoint.pt", "model.pt"):
        _same(load_checkpoint(tmp_path / "straight" / f), load_checkpoint(tmp_path / "resumed" / f), f)
    log = "train_log.csv"
    assert (tmp_path / "straight" / log).read_text() == (tmp_path / "resumed" / log).read_text()
    for key in ("final_loss", "final_losses"):
        assert straight.get(key) == resumed.get(key), key
