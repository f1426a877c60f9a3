"""Training images drawn from label maps with random contrast (domain randomisation, SynthSeg-style).

The ``synthseg`` reference learns to segment from images that never existed: for each training
example a label map (the K-Means labels of one T1 training slice: 0 background, 1 CSF, 2 GM, 3 WM)
is deformed, and an image is painted on it with intensities that owe nothing to T1, so that the
segmenter cannot rely on any one contrast. Every random draw reads the ``synthseg.synthesis``
section of params.yaml (:class:`lmid.config.SynthesisParams`), and one integer seed fixes them all:

1. **Label map, spatially** (nearest-neighbour throughout, so labels stay labels): a left-right
   flip with probability ``flip_prob``; with probability ``deform_prob`` a random affine
   (rotation within ±``rotate_deg``, scale in 1 ± ``scale``, shift within ±``translate`` of the
   slice side) combined with a smooth elastic field (control points ``elastic_spacing`` of the
   side apart, displacements of magnitude drawn from ``elastic_magnitude``, a fraction of the side):
   MONAI's ``RandFlip`` and ``Rand2DElastic``.
2. **Intensities**: per label a mean, drawn uniformly from ``tissue_mean`` (CSF, GM, WM each on
   its own) or ``background_mean`` (label 0), and a spread drawn from ``std``; every pixel is its
   label's mean plus Gaussian noise of its label's spread. The order of the class means is
   therefore random: as often PD-like or T2-like as T1-like.
3. **Acquisition**: a Gaussian blur (σ per axis from ``blur_sigma`` pixels, probability
   ``blur_prob``, ``RandGaussianSmooth``), a loss of resolution (down-sampled by a factor from
   ``lowres_zoom`` and up-sampled again, probability ``lowres_prob``,
   ``RandSimulateLowResolution``), a smooth multiplicative bias field (Legendre polynomials of
   degree ``bias_degree`` with coefficients in ±``bias_coeff``, probability ``bias_prob``,
   ``RandBiasField``) and Rician noise (the magnitude of the image plus complex Gaussian noise of
   a standard deviation drawn up to ``noise_std``, probability ``noise_prob``, ``RandRicianNoise``).
4. **Normalisation** as ``lmid prepare`` does it: clipped to the ``prepare.percentiles`` of the
   (deformed) brain, label > 0, and mapped to [0, 1]; then a random gamma from ``gamma``
   (probability ``gamma_prob``, ``RandAdjustContrast``), which keeps [0, 1].

With every spread, noise, bias, blur and resolution loss switched off, each label's region is one
constant grey value (tests/test_synthseg.py). The image and the deformed labels it was painted on
are returned together; the labels are the network's target.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Labels of a map (lmid.data.slices.LABELS): background, CSF, GM, WM.
N_LABELS = 4


def _array(x) -> np.ndarray:
    """A MONAI output (MetaTensor, tensor or array) as a plain float32 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.as_subclass(torch.Tensor).detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class Synthesiser:
    """Draws (image, labels) pairs from label maps; one object per training run (the MONAI
    transforms are built once and re-seeded for every example)."""

    def __init__(self, cfg, percentiles=(0.5, 99.5)):
        from monai.transforms import (
            RandAdjustContrast,
            RandBiasField,
            RandFlip,
            RandGaussianSmooth,
            RandRicianNoise,
            RandSimulateLowResolution,
        )

        self.cfg = cfg
        self.percentiles = tuple(float(p) for p in percentiles)
        # Columns of a prepared slice run left to right (lmid/data/prepare.py: anterior up).
        self.flip = RandFlip(prob=cfg.flip_prob, spatial_axis=1)
        self._elastic_args = None
        self._elastic = None
        self.blur = RandGaussianSmooth(sigma_x=tuple(cfg.blur_sigma), sigma_y=tuple(cfg.blur_sigma), prob=cfg.blur_prob)
        self.lowres = RandSimulateLowResolution(
            prob=cfg.lowres_prob,
            downsample_mode="area",
            upsample_mode="bilinear",
            zoom_range=tuple(cfg.lowres_zoom),
            align_corners=False,
        )
        self.bias = RandBiasField(
            degree=cfg.bias_degree, coeff_range=(-cfg.bias_coeff, cfg.bias_coeff), prob=cfg.bias_prob
        )
        self.noise = RandRicianNoise(prob=cfg.noise_prob, mean=0.0, std=cfg.noise_std, sample_std=True)
        self.gamma = RandAdjustContrast(prob=cfg.gamma_prob, gamma=tuple(cfg.gamma))

    def _deformer(self, side: int):
        """The affine + elastic transform for slices of ``side`` pixels (its ranges scale with it)."""
        from monai.transforms import Rand2DElastic

        cfg = self.cfg
        if self._elastic_args != side:
            spacing = max(2.0, cfg.elastic_spacing * side)
            self._elastic = Rand2DElastic(
                spacing=(spacing, spacing),
                magnitude_range=(cfg.elastic_magnitude[0] * side, cfg.elastic_magnitude[1] * side),
                prob=cfg.deform_prob,
                rotate_range=(math.radians(cfg.rotate_deg),),
                translate_range=(cfg.translate * side, cfg.translate * side),
                scale_range=(cfg.scale, cfg.scale),
                mode="nearest",
                padding_mode="zeros",
            )
            self._elastic_args = side
        return self._elastic

    def __call__(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """One example from the (H, W) label map ``labels``: (image float32 in [0, 1], labels uint8)."""
        cfg = self.cfg
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"a label map is (H, W), got shape {labels.shape}")
        rs = np.random.RandomState(int(seed) % (2**32))
        deform = self._deformer(labels.shape[0])
        for t in (self.flip, deform, self.blur, self.lowres, self.bias, self.noise, self.gamma):
            t.set_random_state(state=rs)

        # 1. The label map, moved as a whole (nearest neighbour keeps its values).
        lab = torch.as_tensor(labels.astype(np.float32))[None]
        lab = deform(self.flip(lab))
        lab = np.rint(_array(lab)[0]).astype(np.int64).clip(0, N_LABELS - 1)

        # 2. A random intensity model per label (background included).
        means = np.concatenate(
            [rs.uniform(*cfg.background_mean, size=1), rs.uniform(*cfg.tissue_mean, size=N_LABELS - 1)]
        )
        spreads = rs.uniform(*cfg.std, size=N_LABELS)
        image = means[lab] + spreads[lab] * rs.standard_normal(lab.shape)

        # 3. What a scanner does to it: blur, lower resolution, a bias field and Rician noise.
        x = torch.as_tensor(image.astype(np.float32))[None]
        x = self.noise(self.bias(self.lowres(self.blur(x))))
        x = _array(x)[0]

        # 4. [0, 1] as prepare normalises a slice (percentiles of the brain), then a random gamma.
        brain = lab > 0
        values = x[brain] if brain.any() else x.ravel()
        lo, hi = (float(v) for v in np.percentile(values, self.percentiles))
        if not hi > lo:  # a brain of one grey value: its level against the rest of the slice
            lo, hi = float(x.min()), float(x.max())
        x = np.clip((x - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(x)
        x = _array(self.gamma(torch.as_tensor(x.astype(np.float32))[None]))[0]
        return np.clip(x, 0.0, 1.0).astype(np.float32), lab.astype(np.uint8)

    def batch(self, labels: np.ndarray, seeds) -> tuple[np.ndarray, np.ndarray]:
        """Examples for label maps (N, H, W) with one seed each: images (N, H, W), labels (N, H, W)."""
        pairs = [self(lab, int(s)) for lab, s in zip(labels, seeds)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
