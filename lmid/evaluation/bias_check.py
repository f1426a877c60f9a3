"""The check of the bias-field correction: the segmentation ceiling with and without N4.

``lmid prepare`` (where tissue maps exist) records in ``manifest["bias_check"]`` how well the
target-only K-Means segments the *real* target's test slices, with the bias correction it applied
and with the other variant (N4 or none): the ceiling of every Dice the evaluation reports, under
either choice. The report's Protocol section shows it. ``lmid prepare`` passes :func:`bias_check`
to :func:`lmid.data.prepare.prepare`, so the data package does not import this one.
"""

from __future__ import annotations

import numpy as np

from lmid.config import Params
from lmid.data.slices import SliceSet

HOW = (
    "3-cluster K-Means fitted on the real target's training slices, Dice (mean over CSF/GM/WM) of "
    "its test slices against the tissue maps, per slice, averaged"
)


def segmentation_ceiling(params: Params, train: SliceSet, test: SliceSet, train_target, test_target) -> float:
    """Mean Dice against ``test``'s tissue maps of K-Means fitted on ``train_target`` (inside
    ``train``'s masks) and applied to ``test_target`` (inside ``test``'s masks)."""
    from lmid.evaluation.metrics import dice_per_class
    from lmid.evaluation.segment import SEED_OFFSET, fit_segmenter

    seg = params.segment
    km = fit_segmenter(
        train_target,
        train.mask,
        seg.n_clusters,
        seg.max_voxels,
        params.seed + SEED_OFFSET,
        tuple(seg.tissue_order),
    )
    return float(
        np.mean(
            [dice_per_class(km.predict(test_target[i], test.mask[i]), test.label[i])["mean"] for i in range(len(test))]
        )
    )


def bias_check(
    params: Params, train: SliceSet, test: SliceSet, other_train: np.ndarray, other_test: np.ndarray, applied: str
) -> dict | None:
    """The ceiling with the slices as prepared (``train``, ``test``, bias correction ``applied``) and
    with the target slices of the other variant (``other_train``, ``other_test``); None without
    training or test slices."""
    if not len(train) or not len(test):
        return None
    with_applied = segmentation_ceiling(params, train, test, train.target, test.target)
    alternative = segmentation_ceiling(params, train, test, other_train, other_test)
    n4 = applied == "n4"
    return {
        "dice_ceiling_with_n4": with_applied if n4 else alternative,
        "dice_ceiling_without_n4": alternative if n4 else with_applied,
        "applied": applied,
        "test_slices": len(test),
        "how": HOW,
    }
