"""``lmid apply``: one scan in, its translation out, with no data set around it.

The pipeline translates prepared slices of a split; a researcher with a single source scan (a PD
volume) wants one volume back, the way SynthSR or HD-BET work. This module runs ``prepare``'s
per-subject steps on that one scan, translates every axial slice that holds brain with a trained
method, and puts the result back on the scan's own grid:

1. **Model**: a ``model.pt`` written by ``lmid train``, or a folder written by ``lmid publish``
   with ``--method`` (the files' sha256 are checked, and its ``params.yaml`` is the default
   parameter file). Refused: a file that is not an lmid checkpoint (the K-Means segmenter's JSON
   among them), a method that does not translate (``identity`` returns its input), and a model
   trained on another slice size than ``prepare.size`` of the params (other params than the
   model's).
2. **Volume** (:func:`lmid.io.load_volume`, which refuses 2-D and 4-D data, NaN voxels, headers
   without a usable orientation, ...), reoriented to the closest RAS+ orientation as in prepare.
3. **Brain mask**: with ``strip``, BET (:func:`lmid.data.brainmask.strip_skull`, threshold
   ``prepare.strip_threshold``) run on the source itself; without, the source's foreground
   (:func:`lmid.data.brainmask.head_mask`), which is the brain on a skull-stripped scan. The default
   follows the model's training data: ``strip`` when ``prepare.brain_mask`` resolves to ``strip``
   (heads), not otherwise. Prepare strips the *target* volume, which a lone source scan does not
   have; BET on PD stops at the skull (docs/method.md, section 6), so this mask is the weak step.
4. Optional N4 (``prepare.bias_correction``), then **normalisation** to [0, 1] with
   ``prepare.percentiles`` inside the mask, the in-plane **square** around the mask of the brain
   range (``prepare.min_brain_fraction``) and the resize to ``prepare.size``: prepare's functions
   (:mod:`lmid.data.geometry`), so a slice here is cut exactly as a prepared test slice would be.
5. **Translation** of every axial plane that holds brain, ``batch_size`` slices per call, each
   slice with its own seed (by plane), so the result does not depend on the batch size.
6. **Back to the scan's grid**: the translated planes form a volume on the slice grid, whose
   affine is the one prepare records for the NIfTI outputs; it is resampled (linear; labels
   nearest-neighbour) onto the input's shape and affine. Planes without brain are 0.
7. Optionally the **K-Means segmentation** of each translated slice inside its brain mask (the
   evaluation's segmenter, :class:`lmid.evaluation.segment.KMeansSegmenter`), as labels 0-3.

A **segmentation reference** (``synthseg``) translates nothing: its model segments each source
slice directly. With such a model ``--segment`` is required and writes its labels (inside the same
brain mask, resampled nearest-neighbour onto the scan's grid), no segmenter is read, and ``--out``
is refused with one line: a "translation" would only be the input again.

Both outputs are written after everything else has succeeded, each through a temporary file
renamed into place, so a failure leaves no output behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmid.config import Params
from lmid.errors import InputFileError, LmidError, ParamsError

log = logging.getLogger(__name__)

#: Added to ``params.seed`` for the per-plane seeds (the offset ``lmid translate`` uses).
SEED_OFFSET = 7919
#: What the outputs may be called (nibabel writes NIfTI-1; gzipped when the name says so).
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class ModelRef:
    """Which trained model ``--model`` names, and what came with it."""

    method: str
    path: Path  #: the model.pt
    state: dict  #: its contents (loaded once, checked)
    folder: Path | None = None  #: the published folder, when the model came from one
    params: Path | None = None  #: the published folder's params.yaml
    segmenter: Path | None = None  #: the published folder's kmeans.json


def _describe_non_checkpoint(path: Path) -> str | None:
    """Why ``path`` is not a model.pt, when that shows in its first bytes (a clearer refusal than the
    checkpoint loader's); None for a zip archive, which is what ``torch.save`` writes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return None
    if head.lstrip().startswith(b"{"):
        from lmid.evaluation.segment import FORMAT as SEGMENTER_FORMAT

        try:
            content = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            content = None
        if isinstance(content, dict) and content.get("format") == SEGMENTER_FORMAT:
            return "is the K-Means segmenter of 'lmid fit-segmenter', not a translation model (give it as --segmenter)"
    kind = "a NIfTI volume" if str(path).endswith(NIFTI_SUFFIXES) else "not a PyTorch checkpoint"
    return f"not a model.pt written by 'lmid train' ({kind})"


def resolve_model(model: Path, method: str | None = None) -> ModelRef:
    """The model ``--model`` names (a model.pt or a published folder with ``method``), checked to be
    one of lmid's translating methods."""
    from lmid.checkpoint import load_checkpoint
    from lmid.registry import METHOD_NAMES, Access, spec

    model = Path(model)
    folder = params = segmenter = None
    if model.is_dir():
        from lmid.published import MANIFEST, published_entry, published_manifest, verify

        if not (model / MANIFEST).is_file():
            hint = f" (give {model / 'model.pt'})" if (model / "model.pt").is_file() else ""
            raise InputFileError(model, f"is a folder, but not one written by 'lmid publish' (no {MANIFEST}){hint}")
        if method is None:
            have = ", ".join(published_manifest(model)["methods"])
            raise ParamsError(f"--model {model} is a published folder: name one of its methods with --method ({have})")
        _, entry = published_entry(model, method)
        path = model / method / "model.pt"
        if f"{method}/model.pt" not in entry["files"]:
            raise InputFileError(model, f"publishes no model.pt for {method!r}")
        folder = model
        if (model / "params.yaml").is_file():
            verify(model, ["params.yaml"])
            params = model / "params.yaml"
        segmenter = model / "kmeans.json" if (model / "kmeans.json").is_file() else None
    else:
        path = model
        if not path.is_file():
            raise InputFileError(path, "model not found")
        what = _describe_non_checkpoint(path)
        if what is not None:
            raise InputFileError(path, what)
    state = load_checkpoint(path)
    named = state.get("method")
    if not isinstance(named, str):
        raise InputFileError(path, "not a model.pt written by 'lmid train' (it names no method)")
    if named not in METHOD_NAMES:
        raise InputFileError(
            path, f"a model of {named!r}, which is not one of lmid's methods ({', '.join(METHOD_NAMES)})"
        )
    if method is not None and named != method:
        raise InputFileError(path, f"a model of {named!r}, not of --method {method}")
    if spec(named).access is Access.NONE:
        raise InputFileError(
            path, f"a model of {named!r}, a reference that returns its input unchanged: not a translation model"
        )
    return ModelRef(method=named, path=path, state=state, folder=folder, params=params, segmenter=segmenter)


def check_output_name(flag: str, path: Path) -> None:
    if not str(path).endswith(NIFTI_SUFFIXES):
        raise ParamsError(f"{flag} {path}: name a NIfTI file (.nii or .nii.gz)")


def strip_by_default(params: Params) -> bool:
    """Whether the model's training data were heads whose brain prepare found by stripping."""
    from lmid.data.reader import mask_mode

    return mask_mode(params, use_labels=True) == "strip"


def brain_mask(volume: np.ndarray, affine: np.ndarray, strip: bool, params: Params, path: Path):
    """The brain mask of the source on its canonical grid, and how it was found."""
    from lmid.data.brainmask import FOREGROUND, head_mask, strip_skull

    if strip:
        try:
            mask, info = strip_skull(volume, affine, params.prepare.strip_threshold)
        except Exception as err:  # brainextractor fails in many ways on volumes it cannot fit
            raise InputFileError(
                path,
                f"skull stripping (BET) failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "if the scan is already skull-stripped, give --no-strip",
            ) from None
        info = {**info, "stripped": "the input itself"}
    else:
        mask = head_mask(volume)
        info = {"method": f"foreground: > {FOREGROUND} x its 99th percentile, largest component, holes filled"}
    if not mask.any():
        raise InputFileError(path, f"no brain voxels found ({info['method']})")
    return mask, info


def segments(ref: ModelRef) -> bool:
    """Whether ``ref`` is a segmentation reference (it segments the source, translates nothing)."""
    from lmid.registry import spec

    return spec(ref.method).segments


def translate_planes(
    params: Params,
    ref: ModelRef,
    source: np.ndarray,
    seeds: np.ndarray,
    batch_size: int,
    device,
    path: Path,
    labels_out: np.ndarray | None = None,
) -> np.ndarray:
    """Translate (N, H, W) slices ``batch_size`` at a time with a progress bar; (N, H, W) in [0, 1].

    ``labels_out`` (N, H, W) receives a segmentation reference's own labels of the slices."""
    from tqdm import tqdm

    from lmid.methods import get_method
    from lmid.progress import progress_disabled

    m = get_method(ref.method)
    model = m.load(params, ref.path, device)
    out = np.zeros(source.shape, np.float32)
    with tqdm(total=len(source), desc=f"apply: {ref.method}", unit="slice", disable=progress_disabled()) as bar:
        for start in range(0, len(source), batch_size):
            part = slice(start, start + batch_size)
            result = m.translate(params, model, source[part], seeds[part], device, samples=1)
            image = np.asarray(result.image)
            if labels_out is not None:
                if result.labels is None or np.shape(result.labels) != source[part].shape:
                    raise LmidError(f"{ref.method}: returned no labels of shape {source[part].shape}")
                labels_out[part] = result.labels
            if image.shape != source[part].shape:
                raise LmidError(f"{ref.method}: translate returned shape {image.shape}, expected {source[part].shape}")
            if not np.all(np.isfinite(image)):
                raise LmidError(
                    f"{ref.method}: the translation of {path} holds NaN/Inf pixels; nothing written "
                    f"(a diverged model? check {ref.path.parent / 'train_log.csv'})"
                )
            out[part] = np.clip(image, 0.0, 1.0)
            bar.update(len(image))
    return out


def to_source_grid(stack: np.ndarray, slice_affine: np.ndarray, shape, affine: np.ndarray, order: int) -> np.ndarray:
    """A (size, size, depth) stack on the slice grid resampled onto the input's grid (zero outside).

    The stack is padded by one zero voxel on every side first, so that the planes at its edges
    are interpolated like the inner ones instead of being cut off by rounding."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    padded = np.pad(stack, 1)
    shift = np.eye(4)
    shift[:3, 3] = -1.0
    img = nib.Nifti1Image(padded, np.asarray(slice_affine, dtype=np.float64) @ shift)
    out = resample_from_to(img, (tuple(int(n) for n in shape), np.asarray(affine)), order=order, cval=0.0)
    return np.asarray(out.dataobj)


def apply_scan(
    params: Params,
    ref: ModelRef,
    input_path: Path,
    out_path: Path | None,
    *,
    segment_path: Path | None = None,
    segmenter_path: Path | None = None,
    strip: bool | None = None,
    batch_size: int = 16,
    device: str = "auto",
) -> dict:
    """Translate the scan ``input_path`` with ``ref`` and write ``out_path`` (and ``segment_path``);
    with a segmentation reference, write its labels to ``segment_path`` only."""
    from lmid.checkpoint import device_from_arg
    from lmid.data.brainmask import n4_correct
    from lmid.data.geometry import (
        bounding_square,
        brain_planes,
        normalise,
        resize_image,
        resize_labels,
        to_canonical,
    )
    from lmid.io import atomic_path, load_volume, nifti_bytes
    from lmid.methods.runner import slice_seeds

    t0 = time.perf_counter()
    own_labels = segments(ref)
    if own_labels:
        if out_path is not None:
            raise ParamsError(
                f"--out: {ref.method} segments the scan itself and translates nothing; give --segment only "
                "(its labels), not --out"
            )
        if segment_path is None:
            raise ParamsError(f"{ref.method} segments the scan itself: give --segment (where to write its labels)")
    elif out_path is None:
        raise ParamsError("--out is required: where to write the translated volume")
    input_path = Path(input_path)
    out_path = None if out_path is None else Path(out_path)
    if out_path is not None:
        check_output_name("--out", out_path)
    if segment_path is not None:
        check_output_name("--segment", Path(segment_path))
    if batch_size < 1:
        raise ParamsError(f"--batch-size {batch_size}: must be at least 1")
    dev = device_from_arg(device)
    p = params.prepare
    trained = ref.state.get("trained_on")
    if isinstance(trained, dict) and (trained.get("height"), trained.get("width")) != (p.size, p.size):
        raise InputFileError(
            ref.path,
            f"was trained on {trained.get('height')}x{trained.get('width')} slices, but the params give "
            f"prepare.size {p.size}: give the params the model was trained with (--params)",
        )
    segmenter = None
    if segment_path is not None and not own_labels:
        from lmid.evaluation.segment import KMeansSegmenter

        if segmenter_path is None:
            raise ParamsError("--segment needs --segmenter (the kmeans.json written by 'lmid fit-segmenter')")
        if ref.folder is not None and Path(segmenter_path) == ref.segmenter:
            from lmid.published import verify

            verify(ref.folder, ["kmeans.json"])
        segmenter = KMeansSegmenter.load(segmenter_path)

    data, affine_in = load_volume(input_path)
    volume, affine = to_canonical(data, affine_in)
    strip = strip_by_default(params) if strip is None else strip
    mask, mask_info = brain_mask(volume, affine, strip, params, input_path)
    if p.bias_correction == "n4":
        volume, _ = n4_correct(volume, affine, mask)
    normalised, lo, hi = normalise(volume, mask, p.percentiles, input_path)
    square = bounding_square(mask, brain_planes(mask, p.min_brain_fraction), affine, p.size)
    planes = np.flatnonzero(mask.any(axis=(0, 1)))
    source = np.stack([resize_image(square.crop(normalised[:, :, k]), p.size) for k in planes])
    seeds = slice_seeds(params.seed + SEED_OFFSET, volume.shape[2])[planes]

    t1 = time.perf_counter()
    own = np.zeros(source.shape, np.uint8) if own_labels else None
    translated = translate_planes(params, ref, source, seeds, batch_size, dev, input_path, labels_out=own)
    seconds = time.perf_counter() - t1

    slice_affine = affine @ square.matrix()
    outputs = []
    if out_path is not None:
        stack = np.zeros((p.size, p.size, volume.shape[2]), np.float32)
        stack[:, :, planes] = np.moveaxis(translated, 0, -1)
        result = to_source_grid(stack, slice_affine, data.shape, affine_in, order=1)
        outputs.append((out_path, np.clip(result, 0.0, 1.0).astype(np.float32)))
    if segment_path is not None:
        labels = np.zeros((p.size, p.size, volume.shape[2]), np.uint8)
        for j, (image, k) in enumerate(zip(translated, planes)):
            brain = resize_labels(square.crop(mask[:, :, k].astype(np.uint8)), p.size) > 0
            # The brain mask bounds either labels: K-Means of the translation, or the reference's own.
            labels[:, :, k] = np.where(brain, own[j], 0) if own is not None else segmenter.predict(image, brain)
        seg = to_source_grid(labels, slice_affine, data.shape, affine_in, order=0)
        outputs.append((Path(segment_path), np.rint(seg).astype(np.uint8)))

    # Every output is in memory: write them side by side and rename them into place together.
    with contextlib.ExitStack() as stack_of_files:
        tmps = [stack_of_files.enter_context(atomic_path(path)) for path, _ in outputs]
        for tmp, (path, array) in zip(tmps, outputs):
            tmp.write_bytes(nifti_bytes(array, affine_in, gzipped=str(path).endswith(".gz")))
    info = {
        "method": ref.method,
        "model": str(ref.path),
        "segments": own_labels,
        "planes_translated": int(len(planes)),
        "planes": int(volume.shape[2]),
        "slice_size": p.size,
        "brain_mask": mask_info,
        "normalisation": {"lo": lo, "hi": hi, "percentiles": list(p.percentiles)},
        "translate_s": round(seconds, 3),
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    log.info(
        "apply: %d of %d axial planes of %s %s by %s in %.1f s (%.2f s per slice, %s); wrote %s",
        len(planes),
        volume.shape[2],
        input_path,
        "segmented" if own_labels else "translated",
        ref.method,
        seconds,
        seconds / max(1, len(planes)),
        "skull stripped by BET" if strip else "foreground as brain mask",
        ", ".join(str(path) for path, _ in outputs),
    )
    return info
