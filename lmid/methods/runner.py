"""The plumbing around the two verbs: what ``lmid train``, ``lmid translate`` and ``lmid gather`` do.

The methods themselves only see arrays; this module reads the split files, shards the test split,
times the work, and writes shard files, the gathered translations and NIfTI volumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from lmid.checkpoint import device_from_arg
from lmid.config import Params
from lmid.data.slices import check_translated_from, load_slices, split_fingerprint, spread_indices
from lmid.errors import InputFileError, LmidError, ParamsError
from lmid.io import ensure_dir, file_sha256, load_npz, read_json, save_npz, save_volume, write_json, write_text
from lmid.methods import get_method
from lmid.registry import key_values, spec

log = logging.getLogger(__name__)


def train_method(
    params: Params, method: str, train_path: Path, val_path: Path, out_dir: Path, device: str = "auto"
) -> dict:
    """Train ``method`` on what it may see; writes ``model.pt`` and ``train_info.json``."""
    dev = device_from_arg(device)  # a bad --device stops here, before the folder is touched
    _refuse_another_methods_folder(method, Path(out_dir))
    m = get_method(method)
    train = load_slices(train_path)
    val = load_slices(val_path, allow_empty=True)
    shared = sorted(set(map(str, train.subject)) & set(map(str, val.subject)))
    if shared:
        raise InputFileError(
            val_path,
            f"shares subject(s) {', '.join(shared[:5])} with {train_path}: the splits "
            "must come from one 'lmid prepare' run (prepare again)",
        )
    data = m.training_data(params, train)
    out_dir = ensure_dir(out_dir)
    _set_aside_stale_checkpoint(params, method, train_path, out_dir)
    t0 = time.perf_counter()
    info = m.train(params, data, val, out_dir, dev) or {}
    info = {
        "method": method,
        "access": m.access.value,
        "device": _device_name(dev),
        "train_wall_s": round(time.perf_counter() - t0, 3),
        **info,
    }
    if not (out_dir / "model.pt").is_file():
        raise LmidError(f"{method}: training finished without writing {out_dir / 'model.pt'}")
    _record_training_slices(out_dir / "model.pt", train, params)
    if not (out_dir / "train_log.csv").is_file():  # methods without iterations (identity, histmatch)
        write_text(out_dir / "train_log.csv", "step,loss\n")
    write_json(out_dir / "train_info.json", info)
    return info


def _record_training_slices(model_path: Path, train, params: Params) -> None:
    """Store the slice size and modalities a model was trained on in its model.pt, so that
    translate can refuse slices it was not made for (a fully convolutional network would run)."""
    from lmid.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(model_path)
    state["trained_on"] = {
        "height": int(train.shape[0]),
        "width": int(train.shape[1]),
        "source_modality": params.data.source_modality,
        "target_modality": params.data.target_modality,
    }
    save_checkpoint(model_path, state)


def _check_trained_on(model_path: Path, split, slices_path: Path) -> None:
    from lmid.checkpoint import load_checkpoint

    trained = load_checkpoint(model_path).get("trained_on")
    if isinstance(trained, dict) and (trained["height"], trained["width"]) != tuple(split.shape):
        raise InputFileError(
            model_path,
            f"was trained on {trained['height']}x{trained['width']} slices, but "
            f"{slices_path} holds {split.shape[0]}x{split.shape[1]} (prepare.size must be "
            "the same for training and translation)",
        )


def _device_name(dev) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads)"


def training_fingerprint(params: Params, method: str, train_path: Path) -> str:
    """Hash of what a checkpoint's weights depend on: the method's fingerprint keys and the data.

    Keys that only say how long training runs (``resume_keys`` in :mod:`lmid.registry`) are left
    out, so a longer run of the same configuration resumes instead of starting again.
    """
    s = spec(method)
    values = key_values(params.model_dump(mode="json"), s.fingerprint_keys, exclude=s.resume_keys + s.bookkeeping_keys)
    digest = hashlib.sha256()
    digest.update(json.dumps({"method": method, **values}, sort_keys=True).encode())
    with open(train_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: Files of a model folder that name the method they belong to (key ``method``).
_OWNED_FILES = ("model.pt", "train_info.json", "checkpoint.pt")


def _named_method(path: Path) -> str | None:
    """The method ``path`` says it belongs to; None when it is missing, unreadable or silent."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".json":
            content = read_json(path)
        else:
            from lmid.checkpoint import load_checkpoint

            content = load_checkpoint(path)
    except (LmidError, OSError):
        return None
    value = content.get("method") if isinstance(content, dict) else None
    return value if isinstance(value, str) else None


def _refuse_another_methods_folder(method: str, out_dir: Path) -> None:
    """A model folder belongs to one method: training another one there would overwrite its
    model.pt and start from (or set aside) its checkpoint."""
    for name in _OWNED_FILES:
        other = _named_method(out_dir / name)
        if other is not None and other != method:
            raise InputFileError(
                out_dir,
                f"holds a model of {other!r} ({name} names it); refusing to train "
                f"{method!r} there: give {method} a folder of its own",
            )


def _set_aside_stale_checkpoint(params: Params, method: str, train_path: Path, out_dir: Path) -> None:
    """Resume only a checkpoint made with the same params and data; otherwise start afresh.

    The other checkpoint is kept, renamed ``checkpoint.stale-<its fingerprint>.pt``: it may be
    hours of training under the parameters it was made with."""
    fingerprint = training_fingerprint(params, method, train_path)
    stamp = out_dir / "fingerprint.txt"
    ckpt = out_dir / "checkpoint.pt"
    old = stamp.read_text().strip() if stamp.exists() else ""
    if ckpt.exists() and old != fingerprint:
        tag = (old or file_sha256(ckpt))[:12]
        aside, k = out_dir / f"checkpoint.stale-{tag}.pt", 2
        while aside.exists():
            aside, k = out_dir / f"checkpoint.stale-{tag}-{k}.pt", k + 1
        os.replace(ckpt, aside)
        log.warning(
            "%s: %s was made with other parameters or data; set aside as %s, starting afresh", method, ckpt, aside
        )
    elif ckpt.exists():
        from lmid.checkpoint import load_checkpoint

        step = load_checkpoint(ckpt).get("step", "?")
        log.info("%s: resuming from %s (step %s)", method, ckpt, step)
    write_text(stamp, fingerprint + "\n")


def shard_indices(n: int, shard: int, num_shards: int) -> np.ndarray:
    if num_shards < 1:
        raise ParamsError(f"--num-shards {num_shards}: must be at least 1")
    if not 0 <= shard < num_shards:
        raise ParamsError(f"--shard {shard}: must be one of 0..{num_shards - 1} (--num-shards {num_shards})")
    return np.array_split(np.arange(n), num_shards)[shard]


def slice_seeds(seed: int, n: int) -> np.ndarray:
    """One seed per slice of a split, independent of sharding."""
    return np.random.default_rng(seed).integers(0, 2**31 - 1, size=n)


def translate_shard(
    params: Params,
    method: str,
    model_path: Path | None,
    slices_path: Path,
    out_path: Path,
    source_modality: str | None = None,
    shard: int = 0,
    num_shards: int = 1,
    samples: int | None = None,
    device: str = "auto",
    limit: int = 0,
) -> dict:
    """Translate one shard of a split and write ``out_path`` (.npz)."""
    split = load_slices(slices_path)
    m = get_method(method)
    src_name = source_modality or params.data.source_modality
    try:
        source = split.modality(src_name, params.data.source_modality, params.data.target_modality)
    except KeyError as err:
        raise InputFileError(slices_path, str(err.args[0])) from None
    if limit < 0:
        raise ParamsError(f"--limit {limit}: must be 0 (every slice) or a positive number of slices")
    n = len(split) if not limit else min(limit, len(split))
    idx = shard_indices(n, shard, num_shards)
    dev = device_from_arg(device)
    if model_path:
        _check_trained_on(Path(model_path), split, Path(slices_path))
    model = m.load(params, Path(model_path) if model_path else None, dev)
    seeds = slice_seeds(params.seed + 7919, len(split))[idx]
    samples = samples or (params.lmidiffusion.sampler.samples if method == "lmidiffusion" else 1)
    t0 = time.perf_counter()
    result = m.translate(params, model, source[idx], seeds, dev, samples=samples) if len(idx) else None
    wall = time.perf_counter() - t0
    h, w = split.shape
    image = result.image.astype(np.float32) if result else np.zeros((0, h, w), np.float32)
    if image.shape != (len(idx), h, w):
        raise LmidError(f"{method}: translate returned shape {image.shape}, expected {(len(idx), h, w)}")
    std = result.std if result is not None and result.std is not None else np.zeros_like(image)
    mean = result.mean if result is not None and result.mean is not None else image
    for what, array in (("translation", image), ("mean", mean), ("spread (std)", std)):
        bad = ~np.isfinite(np.asarray(array, dtype=np.float32))
        if bad.any():  # clipping keeps NaN; evaluate would be the first to notice
            slices = sorted({int(idx[i]) for i in np.nonzero(bad.reshape(len(bad), -1).any(axis=1))[0]})
            raise LmidError(
                f"{method}: the {what} of slice(s) {slices[:10]} of {slices_path} holds "
                f"{int(bad.sum())} NaN/Inf pixels; nothing written to {out_path} (a diverged model? "
                "check its train_log.csv)"
            )
    info = dict(result.info) if result else {}
    labels = _checked_labels(method, result, (len(idx), h, w))
    save_npz(
        out_path,
        **({"labels": labels} if labels is not None else {}),
        image=np.clip(image, 0.0, 1.0),
        std=std.astype(np.float32),
        mean=np.clip(mean, 0.0, 1.0).astype(np.float32),
        index=idx.astype(np.int64),
        nfe=np.asarray(result.nfe if result else 0),
        wall_s=np.asarray(wall),
        source_modality=np.asarray(src_name),
        method=np.asarray(method),
        # What gather and evaluate check: which part of which split (by content) this is.
        shard=np.asarray(shard),
        num_shards=np.asarray(num_shards),
        n_slices=np.asarray(n),
        split_fingerprint=np.asarray(split_fingerprint(split)),
    )
    return {"slices": len(idx), "wall_s": wall, **info}


def _checked_labels(method: str, result, shape) -> np.ndarray | None:
    """A segmentation reference's labels (uint8, values 0-3, one map per slice); None for a method
    that translates. A segmenting method without labels, or a translating one with them, is refused."""
    segments = spec(method).segments
    labels = None if result is None else result.labels
    if result is None:  # an empty shard
        return np.zeros(shape, np.uint8) if segments else None
    if segments and labels is None:
        raise LmidError(f"{method}: segments the source, but translate returned no labels")
    if not segments and labels is not None:
        raise LmidError(f"{method}: translates, but returned labels (only a segmentation reference may)")
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise LmidError(f"{method}: translate returned labels of shape {labels.shape}, expected {tuple(shape)}")
    if labels.size and (labels.min() < 0 or labels.max() > 3):
        raise LmidError(f"{method}: labels must be 0 (background), 1 (CSF), 2 (GM) or 3 (WM)")
    return labels.astype(np.uint8)


def _check_shards(method: str, parts: list[dict], shard_paths: list[Path], split, slices_path: Path) -> None:
    """Shards must be this method's, of this split, at its size, of one source modality, and
    cover each slice exactly once."""
    h, w = split.shape
    for path, part in zip(shard_paths, parts):
        got = str(part["method"]) if "method" in part else method
        if got != method:
            raise InputFileError(path, f"is a shard of {got!r}, not of {method!r}")
        if part["image"].shape[1:] != (h, w):
            raise InputFileError(
                path, f"holds {part['image'].shape[1]}x{part['image'].shape[2]} slices; {slices_path} has {h}x{w}"
            )
        check_translated_from(path, part, split, slices_path)
    if not parts:
        raise LmidError(f"{method}: no shard files given")
    sources = [str(p.get("source_modality", "")) for p in parts]
    for path, src in zip(shard_paths, sources):
        if src != sources[0]:
            raise InputFileError(
                path, f"translates {src!r}, but {shard_paths[0]} translates {sources[0]!r}: shards of two experiments"
            )
    if all("num_shards" in p for p in parts):
        total = {int(p["num_shards"]) for p in parts}
        n = {int(p["n_slices"]) for p in parts}
        if len(total) != 1 or len(n) != 1:
            raise LmidError(f"{method}: shards of different runs ({sorted(total)} shards, {sorted(n)} slices)")
        (total,), (n,) = total, n
        have = sorted(int(p["shard"]) for p in parts)
        if have != list(range(total)):
            missing = sorted(set(range(total)) - set(have))
            raise LmidError(
                f"{method}: {len(parts)} shard file(s) of {total}; missing shard(s) {missing}"
                if missing
                else f"{method}: shard(s) given twice: {have}"
            )
        index = np.sort(np.concatenate([p["index"] for p in parts]))
        if not np.array_equal(index, np.arange(n)):
            raise LmidError(f"{method}: the shards do not cover slices 0..{n - 1} exactly once")


def gather(
    method: str,
    shard_paths: list[Path],
    slices_path: Path,
    manifest_path: Path,
    out_path: Path,
    nifti_dir: Path | None = None,
) -> dict:
    """Join shard files in slice order; write translations and per-subject NIfTI volumes."""
    split = load_slices(slices_path)
    parts = [load_npz(p, ("image", "std", "index", "nfe", "wall_s")) for p in shard_paths]
    _check_shards(method, parts, list(map(Path, shard_paths)), split, Path(slices_path))
    index = np.concatenate([p["index"] for p in parts]) if parts else np.zeros(0, np.int64)
    if len(np.unique(index)) != len(index):
        raise LmidError(f"{method}: shards overlap (slice indices repeated across {list(map(str, shard_paths))})")
    order = np.argsort(index)
    index = index[order]
    image = np.concatenate([p["image"] for p in parts])[order]
    std = np.concatenate([p["std"] for p in parts])[order]
    # Shards written before the mean was stored carry only the scored image.
    mean = np.concatenate([p["mean"] if "mean" in p else p["image"] for p in parts])[order]
    wall = np.concatenate([np.full(len(p["index"]), float(p["wall_s"]) / max(1, len(p["index"]))) for p in parts])[
        order
    ]
    nfe = np.concatenate([np.full(len(p["index"]), int(p["nfe"])) for p in parts])[order]
    # A segmentation reference's own labels travel with its (untranslated) images.
    with_labels = [("labels" in p) for p in parts]
    if any(with_labels) and not all(with_labels):
        raise LmidError(f"{method}: some shards hold labels and some do not (shards of two runs?)")
    labels = (
        np.concatenate([p["labels"] for p in parts])[order].astype(np.uint8) if all(with_labels) and parts else None
    )
    if labels is None and spec(method).segments:
        raise LmidError(f"{method}: segments the source, but its shards hold no labels (translate them again)")
    src_mod = str(parts[0]["source_modality"]) if parts and "source_modality" in parts[0] else ""
    subjects, planes = split.subject[index], split.slice_index[index]
    # Every check before the first write: a manifest that cannot place the volumes leaves nothing.
    geometry = nifti_geometry(manifest_path, image.shape[1:], subjects, planes) if nifti_dir is not None else None
    save_npz(
        out_path,
        **({"labels": labels} if labels is not None else {}),
        image=image,
        std=std,
        mean=mean,
        index=index,
        subject=subjects,
        slice_index=planes,
        nfe=nfe,
        wall_s=wall,
        source_modality=np.asarray(src_mod),
        method=np.asarray(method),
        split_fingerprint=np.asarray(split_fingerprint(split)),
    )
    if nifti_dir is not None:
        write_nifti(
            method, image, std, subjects, planes, manifest_path, Path(nifti_dir), geometry=geometry, labels=labels
        )
    return {"slices": int(len(index)), "wall_s_total": float(wall.sum())}


def sweep_sampler(
    params: Params,
    model_path: Path,
    slices_path: Path,
    manifest_path: Path,
    segmenter_path: Path,
    shard_path: Path,
    translations_path: Path,
    metrics_path: Path,
    limit: int = 0,
    device: str = "auto",
    chains: int = 1,
    published: Path | None = None,
) -> dict:
    """``lmid sampler-sweep``: LMIDiffusion with ``params``' sampler on validation slices.

    The protocol every setting shares: ``limit`` slices spread evenly over the split (so every
    validation subject is in it; 0 = all), each translated by ``chains`` chains of its own seeds.
    The shard and translations written are chain 0's (what translate and gather would write for
    that subset); the metrics CSV holds one row per slice and chain (column ``chain``), so the
    sampler table averages out the sampling noise of any one chain.

    With ``published`` (a folder written by ``lmid publish`` that holds this setting's scores),
    only the first ``evaluate.published_sweep_check`` picked slices are sampled, with chain 0's
    seeds, and their scores must equal the published ones (:data:`SWEEP_CHECK_TOLERANCE`); the
    metrics written are then the published ones, and the shard and translations hold the
    re-sampled slices only. A check of 0 samples every slice, as without ``published``.
    """
    import tempfile

    import pandas as pd

    from lmid.evaluation.metrics import evaluate_translations, write_metrics_csv

    if chains < 1:
        raise ParamsError(f"--chains {chains}: must be at least 1")
    split = load_slices(slices_path)
    picked = spread_indices(len(split), limit)
    reuse, check = None, params.evaluate.published_sweep_check
    if published is not None and check > 0:
        from lmid.published import published_sweep

        reuse = published_sweep(published, params, slices_path)
        if reuse is None:
            log.info("sampler-sweep: %s publishes no scores for this setting; sampling every slice", published)
        else:
            chains, check = 1, min(check, len(picked))
    frames, info = [], {}
    # The work folder sits beside the outputs (same file system); DVC runs the step before it exists.
    with tempfile.TemporaryDirectory(prefix=".sweep-", dir=ensure_dir(Path(metrics_path).parent)) as tmp:
        subset_path = Path(tmp) / Path(slices_path).name
        # Seeds follow a slice's place in the subset and the first places draw the same seeds
        # however long it is, so the first `check` slices are sampled as in the full sweep.
        sampled = picked[:check] if reuse is not None else picked
        split.subset(sampled).save(subset_path)
        for chain in range(chains):
            # Chain k draws from seeds of params.seed + k (chain 0: the seeds translate would use).
            run_params = params if chain == 0 else params.model_copy(update={"seed": params.seed + chain})
            shard = shard_path if chain == 0 else Path(tmp) / f"shard-chain{chain}.npz"
            joined = translations_path if chain == 0 else Path(tmp) / f"translations-chain{chain}.npz"
            part = translate_shard(run_params, "lmidiffusion", model_path, subset_path, shard, samples=1, device=device)
            gather("lmidiffusion", [shard], subset_path, manifest_path, joined)
            df = evaluate_translations(
                "lmidiffusion", joined, subset_path, segmenter_path, Path(tmp) / f"metrics-chain{chain}.csv"
            )
            df["index"] = sampled[df["index"].to_numpy(dtype=int)]  # back to the full split's indices
            df.insert(0, "chain", chain)
            frames.append(df)
            info = part if chain == 0 else info
    scores = pd.concat(frames, ignore_index=True)
    if reuse is not None:
        worst = _check_sweep(scores, reuse, picked, published)
        log.info(
            "sampler-sweep: %d re-sampled slices match %s (largest differences: %s); its scores are reused",
            check,
            published,
            ", ".join(f"{k} {v:.2g}" for k, v in worst.items()),
        )
        scores = reuse
    write_metrics_csv(metrics_path, scores)
    return {**info, "chains": chains, "slices_picked": [int(i) for i in picked]}


#: Largest difference between a re-sampled slice's score and its published one (per column).
SWEEP_CHECK_TOLERANCE = {"dice_km_mean": 1e-6, "psnr_mask": 1e-4, "ssim_mask": 1e-6, "nfe": 0}


def _check_sweep(fresh, published_scores, picked: np.ndarray, folder: Path) -> dict[str, float]:
    """The published scores are of the picked slices, and every re-sampled slice (chain 0) has
    the same scores as its published row, within :data:`SWEEP_CHECK_TOLERANCE`. Returns the
    largest difference per column."""
    worst = dict.fromkeys(SWEEP_CHECK_TOLERANCE, 0.0)
    theirs = published_scores[published_scores["chain"] == 0].set_index("index")
    published_slices, picked_slices = (sorted(int(i) for i in ix) for ix in (theirs.index, picked))
    if published_slices != picked_slices:
        raise LmidError(
            f"{folder}: its sampler scores are of validation slices {published_slices[:8]}, "
            f"this sweep picks {picked_slices[:8]} (another --limit?); sample it afresh "
            "(evaluate.published_sweep_check=0)"
        )
    for _, row in fresh.iterrows():
        i = int(row["index"])
        for column, tol in SWEEP_CHECK_TOLERANCE.items():
            got, want = float(row[column]), float(theirs.loc[i, column])
            worst[column] = max(worst[column], abs(got - want))
            if not abs(got - want) <= tol:
                raise LmidError(
                    f"{folder}: validation slice {i} re-sampled from the published weights gives {column} "
                    f"{got:.6g}, but the published sweep has {want:.6g}: the weights or the sampler changed "
                    "since it was published; sample it afresh (evaluate.published_sweep_check=0)"
                )
    return worst


def nifti_geometry(manifest_path: Path, size, subjects: np.ndarray, slice_index: np.ndarray) -> dict:
    """Each subject's volume depth and slice affine from ``manifest.json``, checked against the
    slices that will be written into it (size, subjects, planes)."""
    manifest = read_json(manifest_path)
    recorded = manifest.get("slice_size") if isinstance(manifest, dict) else None
    if recorded is not None and tuple(recorded) != tuple(size):
        raise InputFileError(
            manifest_path,
            f"describes {recorded[0]}x{recorded[1]} slices, but the translations are "
            f"{size[0]}x{size[1]}: the affines would place them wrongly",
        )
    known = manifest.get("subjects", {}) if isinstance(manifest, dict) else {}
    out = {}
    for sid in np.unique(subjects):
        g = known.get(str(sid))
        if not isinstance(g, dict) or "n_axial" not in g or "slice_affine" not in g:
            raise InputFileError(manifest_path, f"no geometry recorded for subject {sid}")
        depth, deepest = int(g["n_axial"]), int(np.max(slice_index[subjects == sid]))
        if not 0 <= deepest < depth:
            raise InputFileError(
                manifest_path,
                f"gives subject {sid} {depth} axial planes, but its slices reach "
                f"plane {deepest}: from another prepare run?",
            )
        out[str(sid)] = {"n_axial": depth, "slice_affine": np.asarray(g["slice_affine"], dtype=np.float64)}
    return out


def write_nifti(
    method: str,
    image: np.ndarray,
    std: np.ndarray,
    subjects: np.ndarray,
    slice_index: np.ndarray,
    manifest_path: Path,
    out_dir: Path,
    geometry: dict | None = None,
    labels: np.ndarray | None = None,
) -> None:
    """One NIfTI per subject on the prepared slice grid, with the affine recorded by ``prepare``.

    Axial slices that were not selected are left at 0; a viewer shows the volume in world
    coordinates aligned with the source volume. ``geometry``: :func:`nifti_geometry`'s answer
    when the caller has checked the manifest already. ``labels`` (a segmentation reference's):
    written beside the images as ``<subject>-<method>-labels.nii.gz`` (uint8, 0-3).
    """
    if geometry is None:
        geometry = nifti_geometry(manifest_path, image.shape[1:], subjects, slice_index)
    ensure_dir(out_dir)
    for sid in np.unique(subjects):
        g = geometry[str(sid)]
        sel = subjects == sid
        vol = np.zeros((image.shape[1], image.shape[2], g["n_axial"]), np.float32)
        unc = np.zeros_like(vol)
        for img, sd, z in zip(image[sel], std[sel], slice_index[sel]):
            vol[:, :, int(z)] = img
            unc[:, :, int(z)] = sd
        save_volume(out_dir / f"{sid}-{method}.nii.gz", vol, g["slice_affine"])
        if labels is not None:
            lab = np.zeros(vol.shape, np.uint8)
            for seg, z in zip(labels[sel], slice_index[sel]):
                lab[:, :, int(z)] = seg
            save_volume(out_dir / f"{sid}-{method}-labels.nii.gz", lab, g["slice_affine"])
        if np.any(unc):
            save_volume(out_dir / f"{sid}-{method}-std.nii.gz", unc, g["slice_affine"])
