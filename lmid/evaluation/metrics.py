"""Per-slice scores of one method's translations: Dice, PSNR and SSIM.

Protocol (the paper states none of it; these are our choices, listed again in the report):

* **Dice** per tissue class c in {CSF, GM, WM}: ``2 |P_c ∩ R_c| / (|P_c| + |R_c|)`` over the
  slice, where P is the K-Means segmentation of the translation (inside the test slice's brain
  mask) and R the reference: (a) the ground-truth labels when the split has them
  (``dice_gt_*``) and (b) the same K-Means applied to the real target slice (``dice_km_*``, the
  paper's protocol, always available). ``*_mean`` is the unweighted mean of the three classes on
  that slice; a table's Dice is the mean of those per-slice means. When a class is absent from
  both P and R the Dice is 1.0 (nothing to find, nothing found); absent from one only gives 0.0.
* **PSNR** against the real target slice, both on [0, 1] with ``data_range = 1``:
  ``10 log10(1 / MSE)``, over the whole slice (``psnr``) and over brain-mask pixels only
  (``psnr_mask``). An MSE below 1e-10 is floored there (PSNR at most 100 dB), so identical images
  give a finite number.
* **Tissue contrast** (needs no segmenter, so a flat or saturated image cannot score well): with
  the tissue classes of the slice (ground truth when the split has labels, else K-Means of the real
  target), ``contrast_wm_gm`` = (mean WM − mean GM) of the translation over the same difference on
  the real target, ``contrast_gm_csf`` likewise; 1 means the real contrast, 0 none, < 0 reversed.
  ``tissue_order`` is 1 when the translation's class means run WM > GM > CSF (T1 order), else 0.
  NaN when a class is missing from the slice or the real contrast is below 1e-3.
* **Ceiling**: ``dice_ceiling`` is the Dice of the K-Means segmentation of the *real* target slice
  against the ground truth (NaN without labels): what a perfect translation would score.
* **SSIM** (Wang et al. 2004) with scikit-image's defaults: 7×7 uniform window, sample covariance,
  K1 = 0.01, K2 = 0.03, ``data_range = 1``. ``ssim`` is the mean of the SSIM map without the
  3-pixel border (scikit-image's value); ``ssim_mask`` is the mean of the full SSIM map
  (``full=True``) over brain-mask pixels.
* **A segmentation reference** (``segments`` in lmid/registry.py: ``synthseg``) translates
  nothing: its translations file carries its own ``labels`` beside the untouched source slice.
  Those labels take the place of the K-Means segmentation of a translation, inside the test
  slice's brain mask exactly as K-Means is applied (0 outside), and are scored by the same Dice.
  PSNR, SSIM and the tissue contrasts are NaN: there is no translated image to score.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lmid.errors import InputFileError, LmidError
from lmid.evaluation.segment import TISSUE_LABELS, KMeansSegmenter

CLASSES = ("csf", "gm", "wm")
MSE_FLOOR = 1e-10
#: Column order of a per-slice metrics CSV.
COLUMNS = (
    "method",
    "index",
    "subject",
    "slice_index",
    *(f"dice_gt_{c}" for c in (*CLASSES, "mean")),
    *(f"dice_km_{c}" for c in (*CLASSES, "mean")),
    "psnr",
    "psnr_mask",
    "ssim",
    "ssim_mask",
    "contrast_wm_gm",
    "contrast_gm_csf",
    "tissue_order",
    "dice_ceiling",
    "nfe",
    "wall_s",
)
#: Smallest real tissue contrast a ratio is taken against.
MIN_CONTRAST = 1e-3


# --------------------------------------------------------------------------------- primitives
def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty, 0.0 when only one is."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def dice_per_class(pred_labels: np.ndarray, ref_labels: np.ndarray) -> dict[str, float]:
    """Dice for CSF, GM, WM and their unweighted mean (keys ``csf``, ``gm``, ``wm``, ``mean``)."""
    out = {c: dice(pred_labels == TISSUE_LABELS[c.upper()], ref_labels == TISSUE_LABELS[c.upper()]) for c in CLASSES}
    out["mean"] = float(np.mean([out[c] for c in CLASSES]))
    return out


def psnr(reference: np.ndarray, image: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """PSNR in dB; over ``mask`` pixels only when given (NaN for an empty mask)."""
    diff = np.asarray(reference, dtype=np.float64) - np.asarray(image, dtype=np.float64)
    if mask is not None:
        diff = diff[np.asarray(mask, dtype=bool)]
        if diff.size == 0:
            return float("nan")
    mse = max(float(np.mean(diff * diff)), MSE_FLOOR)
    return 10.0 * math.log10(data_range * data_range / mse)


def ssim(reference: np.ndarray, image: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """SSIM (scikit-image defaults); with ``mask``, the mean of the full SSIM map over mask pixels."""
    from skimage.metrics import structural_similarity

    ref = np.asarray(reference, dtype=np.float64)
    img = np.asarray(image, dtype=np.float64)
    if mask is None:
        return float(structural_similarity(ref, img, data_range=data_range))
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return float("nan")
    _, smap = structural_similarity(ref, img, data_range=data_range, full=True)
    return float(smap[mask].mean())


def tissue_contrast(image: np.ndarray, target: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """Translated tissue contrasts relative to the real target's, and the T1 order flag."""
    x = np.asarray(image, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    means = {}
    for c in CLASSES:
        sel = classes == TISSUE_LABELS[c.upper()]
        if not sel.any():
            return {"contrast_wm_gm": float("nan"), "contrast_gm_csf": float("nan"), "tissue_order": float("nan")}
        means[c] = (float(x[sel].mean()), float(y[sel].mean()))

    def ratio(a: str, b: str) -> float:
        real = means[a][1] - means[b][1]
        return (means[a][0] - means[b][0]) / real if abs(real) >= MIN_CONTRAST else float("nan")

    order = means["wm"][0] > means["gm"][0] > means["csf"][0]
    return {"contrast_wm_gm": ratio("wm", "gm"), "contrast_gm_csf": ratio("gm", "csf"), "tissue_order": float(order)}


def score_slice(
    translation: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    segmenter: KMeansSegmenter,
    label: np.ndarray | None = None,
    target_labels: np.ndarray | None = None,
    pred_labels: np.ndarray | None = None,
) -> dict[str, float]:
    """Every per-slice score of one translated slice (see the module docstring).

    ``pred_labels``: a segmentation reference's own labels of the slice, scored instead of the
    K-Means segmentation of ``translation`` (inside ``mask``); the image scores are then NaN.
    """
    x = np.clip(np.asarray(translation, dtype=np.float64), 0.0, 1.0)
    y = np.clip(np.asarray(target, dtype=np.float64), 0.0, 1.0)
    if pred_labels is not None:
        pred = np.where(np.asarray(mask, dtype=bool), np.asarray(pred_labels), 0).astype(np.uint8)
    else:
        pred = segmenter.predict(x, mask)
    if target_labels is None:
        target_labels = segmenter.predict(y, mask)
    row: dict[str, float] = {}
    gt = dice_per_class(pred, label) if label is not None else {c: float("nan") for c in (*CLASSES, "mean")}
    km = dice_per_class(pred, target_labels)
    row.update({f"dice_gt_{k}": v for k, v in gt.items()})
    row.update({f"dice_km_{k}": v for k, v in km.items()})
    row["psnr"] = psnr(y, x)
    row["psnr_mask"] = psnr(y, x, mask)
    row["ssim"] = ssim(y, x)
    row["ssim_mask"] = ssim(y, x, mask)
    classes = label if label is not None else np.where(mask, target_labels, 0)
    row.update(tissue_contrast(x, y, classes))
    if pred_labels is not None:  # nothing was translated: no image to score
        for key in ("psnr", "psnr_mask", "ssim", "ssim_mask", "contrast_wm_gm", "contrast_gm_csf", "tissue_order"):
            row[key] = float("nan")
    row["dice_ceiling"] = dice_per_class(target_labels, label)["mean"] if label is not None else float("nan")
    return row


# ------------------------------------------------------------------------------------ command
def evaluate_translations(
    method: str,
    translations_path: str | Path,
    slices_path: str | Path,
    segmenter_path: str | Path,
    out_path: str | Path,
) -> "pd.DataFrame":  # noqa: F821
    """``lmid evaluate``: score every translated slice and write one CSV row per slice."""
    import pandas as pd

    from lmid.data.slices import check_translated_from, load_slices
    from lmid.io import load_npz

    split = load_slices(slices_path)
    seg = KMeansSegmenter.load(segmenter_path)
    tr = load_npz(translations_path, ("image", "index"))
    image, index = tr["image"], np.asarray(tr["index"]).astype(np.int64)
    n = len(index)
    if image.ndim != 3 or image.shape[0] != n:
        raise InputFileError(translations_path, f"'image' has shape {image.shape}, expected ({n}, H, W)")
    if image.shape[1:] != split.shape:
        raise InputFileError(translations_path, f"slices are {image.shape[1:]}, but {slices_path} holds {split.shape}")
    if n and (index.min() < 0 or index.max() >= len(split)):
        raise InputFileError(translations_path, f"'index' points outside the {len(split)} slices of {slices_path}")
    # Gather records which subject and plane each translation came from: a translation scored
    # against another split's slice would give a number that looks fine and means nothing.
    for key, want in (("subject", split.subject), ("slice_index", split.slice_index)):
        if n and key in tr and not np.array_equal(np.asarray(tr[key]).astype(want.dtype), want[index]):
            raise InputFileError(
                translations_path, f"was made from another split than {slices_path} (its {key} values do not match)"
            )
    # The same subjects and planes can come from another split file (the unseen protocol's twin,
    # another prepare): only the split's content, recorded by translate and gather, tells.
    check_translated_from(translations_path, tr, split, slices_path)
    if n and (float(image.min()) < -1e-4 or float(image.max()) > 1 + 1e-4):
        raise InputFileError(
            translations_path,
            f"'image' holds values in [{float(image.min()):.4g}, "
            f"{float(image.max()):.4g}]; translations must lie in [0, 1]",
        )
    if not np.all(np.isfinite(image)):
        raise InputFileError(translations_path, "'image' contains NaN/Inf values")
    if "method" in tr and str(tr["method"]) not in ("", method):
        raise LmidError(f"{translations_path}: holds translations of {str(tr['method'])!r}, not {method!r}")
    labels = _segmentation_labels(method, tr, n, split.shape, translations_path)
    nfe = _per_slice(tr.get("nfe"), n, 0)
    wall = _per_slice(tr.get("wall_s"), n, float("nan"))
    if "wall_s" in tr and np.ndim(tr["wall_s"]) == 0 and n:
        wall = wall / n  # an un-gathered shard stores its total time
    rows = []
    for k, i in enumerate(index):
        row = {
            "method": method,
            "index": int(i),
            "subject": str(split.subject[i]),
            "slice_index": int(split.slice_index[i]),
        }
        row.update(
            score_slice(
                image[k],
                split.target[i],
                split.mask[i],
                seg,
                label=split.label[i] if split.has_label else None,
                pred_labels=labels[k] if labels is not None else None,
            )
        )
        row["nfe"] = int(nfe[k])
        row["wall_s"] = float(wall[k])
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    write_metrics_csv(out_path, df)
    return df


def _segmentation_labels(method: str, tr: dict, n: int, size, path) -> np.ndarray | None:
    """A segmentation reference's labels from its translations file (None for a translating method)."""
    from lmid.registry import METHODS

    segments = method in METHODS and METHODS[method].segments
    if "labels" not in tr:
        if segments:
            raise InputFileError(
                path, f"holds no 'labels': {method} segments the source, translate and gather it again"
            )
        return None
    if not segments:
        raise InputFileError(path, f"holds 'labels', but {method} is not a segmentation reference")
    labels = np.asarray(tr["labels"])
    if labels.shape != (n, *size):
        raise InputFileError(path, f"'labels' has shape {labels.shape}, expected {(n, *size)}")
    if labels.size and (labels.min() < 0 or labels.max() > 3):
        raise InputFileError(path, "'labels' must hold 0 (background), 1 (CSF), 2 (GM) or 3 (WM)")
    return labels.astype(np.uint8)


def _per_slice(value, n: int, default) -> np.ndarray:
    if value is None:
        return np.full(n, default)
    value = np.asarray(value)
    if value.ndim == 0:  # one number for the whole file (an un-gathered shard)
        return np.full(n, value.item())
    value = value.reshape(-1)
    return value[:n] if value.size >= n else np.full(n, default)


def write_metrics_csv(path: str | Path, df) -> None:
    """CSV written atomically with a fixed float format (same numbers, same bytes)."""
    from lmid.io import write_text

    write_text(path, df.to_csv(index=False, float_format="%.8g", na_rep=""))


def read_metrics_csv(path: str | Path):
    """Read a per-slice metrics CSV and check its columns."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    try:
        df = pd.read_csv(path, dtype={"subject": str, "method": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputFileError(path, f"not a readable CSV ({err})") from None
    needed = ("index", "subject", "slice_index", "dice_km_mean", "psnr", "ssim")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise InputFileError(path, f"missing columns {missing} (written by 'lmid evaluate'?)")
    return df
