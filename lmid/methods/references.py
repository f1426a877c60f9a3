"""The two cheap references every table carries: the source itself, and histogram matching.

* ``identity`` sees nothing and returns the source slice unchanged: what the segmenter and the
  metrics make of an untranslated PD slice.
* ``histmatch`` sees only the target training intensities (a histogram): it stores their quantiles
  inside the brain mask and maps each source slice's brain intensities onto them. A monotone
  increasing map cannot undo a contrast inversion (CSF is bright in PD, dark in T1), which is what
  this reference shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmid.checkpoint import load_checkpoint, save_checkpoint
from lmid.config import Params
from lmid.data.slices import SliceSet
from lmid.errors import LmidError
from lmid.methods.base import Method, TrainingData, Translation


class Identity(Method):
    name = "identity"
    description = "the source slice itself, untranslated (lower reference)"

    def train(self, params: Params, data: TrainingData, val: SliceSet, out_dir: Path, device: torch.device) -> dict:
        # Nothing to learn; the file exists so that every method leaves the same outputs.
        save_checkpoint(Path(out_dir) / "model.pt", {"method": "identity"})
        return {"parameters": 0, "nfe_per_slice": 0}

    def load(self, params: Params, model_path: Path | None, device: torch.device):
        if model_path is not None:
            ck = load_checkpoint(model_path, required=("method",))
            if ck["method"] != "identity":
                raise LmidError(f"{model_path}: a model of method {ck['method']!r}, not identity")
        return None

    def translate(
        self, params: Params, model, source: np.ndarray, seeds: np.ndarray, device: torch.device, samples: int = 1
    ) -> Translation:
        image = np.array(source, dtype=np.float32, copy=True)
        return Translation(image=image, std=np.zeros_like(image) if samples > 1 else None, nfe=0)


def reference_quantiles(values: np.ndarray, n_quantiles: int) -> tuple[np.ndarray, np.ndarray]:
    """Levels p_k = k / (n − 1) and the intensities q_k below which a fraction p_k of ``values`` lie."""
    levels = np.linspace(0.0, 1.0, n_quantiles)
    return levels, np.quantile(np.asarray(values, dtype=np.float64), levels)


def match_to_quantiles(values: np.ndarray, levels: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Quantile mapping: each value goes to the reference intensity at its own quantile.

    A value's quantile is its mid-rank among ``values`` (ties share one), (cumulative count − ½·count)
    / n, so the output histogram follows the reference's as closely as n values allow; the map is
    monotone increasing, like :func:`skimage.exposure.match_histograms`, but against stored
    reference quantiles instead of a reference image.
    """
    values = np.asarray(values)
    if values.size == 0:
        return values.astype(np.float32)
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    position = (np.cumsum(counts) - 0.5 * counts) / values.size
    return np.interp(position, levels, quantiles)[inverse].astype(np.float32)


class HistMatch(Method):
    name = "histmatch"
    description = "per-slice histogram matching of the source brain onto the target training histogram"

    def train(self, params: Params, data: TrainingData, val: SliceSet, out_dir: Path, device: torch.device) -> dict:
        if data.target is None or data.target_mask is None:
            raise LmidError("histmatch needs the target training slices and their brain masks")
        values = data.target[data.target_mask.astype(bool)]
        if values.size == 0:
            raise LmidError("histmatch: the training brain masks are empty; nothing to build a histogram from")
        n_q = params.histmatch.n_quantiles
        levels, quantiles = reference_quantiles(values, n_q)
        save_checkpoint(
            Path(out_dir) / "model.pt",
            {
                "method": "histmatch",
                "n_quantiles": n_q,
                "levels": torch.from_numpy(levels),
                "quantiles": torch.from_numpy(quantiles),
            },
        )
        return {"parameters": n_q, "nfe_per_slice": 0, "brain_voxels": int(values.size)}

    def load(self, params: Params, model_path: Path | None, device: torch.device):
        if model_path is None:
            raise LmidError("histmatch: translate needs --model MODEL_DIR/model.pt (the stored target histogram)")
        ck = load_checkpoint(model_path, required=("method", "levels", "quantiles"))
        if ck["method"] != "histmatch":
            raise LmidError(f"{model_path}: a model of method {ck['method']!r}, not histmatch")
        return {"levels": ck["levels"].numpy(), "quantiles": ck["quantiles"].numpy()}

    def translate(
        self, params: Params, model, source: np.ndarray, seeds: np.ndarray, device: torch.device, samples: int = 1
    ) -> Translation:
        threshold = params.histmatch.mask_threshold
        out = np.zeros(source.shape, np.float32)
        for i, s in enumerate(source):
            brain = s > threshold  # translate sees only the source, so its brain is its non-background
            out[i][brain] = match_to_quantiles(s[brain], model["levels"], model["quantiles"])
        out = np.clip(out, 0.0, 1.0)
        return Translation(
            image=out, std=np.zeros_like(out) if samples > 1 else None, nfe=0, info={"mask_threshold": threshold}
        )
