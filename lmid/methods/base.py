"""The two verbs every method has, and what each may see.

A method is a subclass of :class:`Method` named after its entry in :mod:`lmid.registry`,
which declares its ``access`` (what training data it may see). :meth:`Method.training_data` is the
only way a method gets training data, and it builds that data from the declaration, so a method
cannot see more than it declares. The
translation side is uniform too: a batch of source slices in [0, 1] in, translations in [0, 1] out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from lmid.config import Params
from lmid.data.slices import SliceSet
from lmid.registry import Access, MethodSpec, spec


@dataclass
class TrainingData:
    """What a method is given to train on. ``source`` is ``None`` unless its access allows it."""

    target: np.ndarray | None
    source: np.ndarray | None
    paired: bool
    #: Subjects whose slices appear in ``target`` / ``source`` (for the leakage tests).
    target_subjects: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    source_subjects: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    target_mask: np.ndarray | None = None


@dataclass
class Translation:
    """Output of :meth:`Method.translate` for a batch of N slices.

    A segmentation reference (``segments`` in :mod:`lmid.registry`, e.g. ``synthseg``) translates
    nothing: its ``image`` is the source slice itself, kept so that every method leaves the same
    files, and is not scored; its ``labels`` are what the evaluation scores instead of the K-Means
    segmentation of a translation.
    """

    image: np.ndarray  # (N, H, W) float32 in [0, 1]: one sample per slice, the one that is scored
    std: np.ndarray | None = None  # (N, H, W) per-pixel std over samples, when samples > 1
    mean: np.ndarray | None = None  # (N, H, W) mean over samples, when samples > 1
    nfe: int = 0  # network evaluations per slice (per sample × samples)
    info: dict = field(default_factory=dict)
    #: (N, H, W) uint8, 0 background, 1 CSF, 2 GM, 3 WM: a segmentation reference's own labels of
    #: the whole slice (the evaluation keeps them inside the test slice's brain mask); None for a
    #: method that translates.
    labels: np.ndarray | None = None


class Method:
    name: ClassVar[str]
    #: The method's entry in :mod:`lmid.registry` (display name, access, parameter keys).
    spec: ClassVar[MethodSpec]
    access: ClassVar[Access]
    #: One line for the report.
    description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.spec = spec(cls.name)
        cls.access = cls.spec.access

    # ------------------------------------------------------------------ training data (enforced)
    def training_data(self, params: Params, train: SliceSet) -> TrainingData:
        seed = params.seed
        if self.access is Access.NONE:
            return TrainingData(target=None, source=None, paired=False)
        if self.access in (Access.TARGET_ONLY, Access.TARGET_HISTOGRAM):
            return TrainingData(
                target=train.target.copy(),
                source=None,
                paired=False,
                target_subjects=np.unique(train.subject),
                target_mask=train.mask.copy(),
            )
        if self.access is Access.PAIRED:
            return TrainingData(
                target=train.target.copy(),
                source=train.source.copy(),
                paired=True,
                target_subjects=np.unique(train.subject),
                source_subjects=np.unique(train.subject),
                target_mask=train.mask.copy(),
            )
        if self.access is Access.TARGET_AND_SOURCE_FRACTION:
            fraction = params.cyclegan.source_fraction
            rng = np.random.default_rng(seed + 17)
            n = len(train)
            k = max(1, int(round(fraction * n)))
            src_idx = np.sort(rng.choice(n, size=k, replace=False))
            # Unpaired: the source slices are shuffled independently of the target slices.
            src = train.source[rng.permutation(src_idx)].copy()
            return TrainingData(
                target=train.target.copy(),
                source=src,
                paired=False,
                target_subjects=np.unique(train.subject),
                source_subjects=np.unique(train.subject[src_idx]),
                target_mask=train.mask.copy(),
            )
        raise AssertionError(self.access)

    # ----------------------------------------------------------------------- the two verbs
    def train(self, params: Params, data: TrainingData, val: SliceSet, out_dir: Path, device: torch.device) -> dict:
        """Train (resuming from ``out_dir`` checkpoints) and write ``out_dir/model.pt``.

        Returns a JSON-able dict of facts for the report (training time, steps, ...).
        """
        raise NotImplementedError

    def load(self, params: Params, model_path: Path, device: torch.device):
        """Load what :meth:`translate` needs from ``model_path`` (``weights_only=True``)."""
        raise NotImplementedError

    def translate(
        self, params: Params, model, source: np.ndarray, seeds: np.ndarray, device: torch.device, samples: int = 1
    ) -> Translation:
        """Translate source slices (N, H, W) in [0, 1] into target-looking slices.

        ``seeds`` holds one integer per slice; a stochastic method draws each slice's noise from a
        generator seeded with it, so a slice's result does not depend on how the split is sharded
        or batched.
        """
        raise NotImplementedError
