"""Method steps: ``train``, ``translate`` (one shard), ``gather`` (join shards), and ``apply`` (one scan)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmid.cli import add_common, load_params_from_args
from lmid.config import METHOD_NAMES, SAMPLER_SETTING_HELP


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one method on what it may see",
        description="Train a method on the training split (only the data its access rule "
        "allows) and write MODEL_DIR/model.pt; re-running resumes from the last checkpoint.",
    )
    add_common(p)
    p.add_argument("--method", choices=METHOD_NAMES, required=True)
    p.add_argument("--train", type=Path, required=True, help="training split (.npz)")
    p.add_argument("--val", type=Path, required=True, help="validation split (.npz)")
    p.add_argument("--out", type=Path, required=True, help="model folder (checkpoints, model.pt, logs)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    p.set_defaults(func=_train)

    p = sub.add_parser("translate", help="translate one shard of a split with a trained method")
    add_common(p)
    p.add_argument("--method", choices=METHOD_NAMES, required=True)
    p.add_argument("--model", type=Path, default=None, help="MODEL_DIR/model.pt written by 'lmid train'")
    p.add_argument("--slices", type=Path, required=True, help="split to translate (.npz)")
    p.add_argument("--source-modality", default=None, help="modality to translate (default: data.source_modality)")
    p.add_argument("--shard", type=_non_negative_index, default=0, help="which shard, 0..NUM_SHARDS-1 (default 0)")
    p.add_argument("--num-shards", type=_positive, default=1, help="shards the split is cut into (default 1)")
    p.add_argument("--samples", type=_positive, default=None, help="samples per slice (mean + std map)")
    p.add_argument(
        "--sampler",
        default=None,
        metavar="SETTING",
        help=f"lmidiffusion sampler {SAMPLER_SETTING_HELP}, e.g. ddim-25-quad (overrides lmidiffusion.sampler)",
    )
    p.add_argument("--limit", type=_non_negative, default=0, help="only the first N slices (0 = all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, required=True, help="shard output (.npz)")
    p.set_defaults(func=_translate)

    p = sub.add_parser(
        "sampler-sweep",
        help="LMIDiffusion at one sampler setting, translated and scored",
        description="Translate --limit slices spread over a split with LMIDiffusion at one sampler setting "
        "(--chains chains each), join them and score them: what 'lmid translate', "
        "'lmid gather' and 'lmid evaluate' would write, in one step (the sampler table).",
    )
    add_common(p)
    p.add_argument("--model", type=Path, required=True, help="lmidiffusion/model.pt written by 'lmid train'")
    p.add_argument("--slices", type=Path, required=True, help="split to translate (.npz), e.g. val.npz")
    p.add_argument("--manifest", type=Path, required=True, help="manifest.json of the prepared slices")
    p.add_argument("--segmenter", type=Path, required=True, help="JSON written by 'lmid fit-segmenter'")
    p.add_argument(
        "--sampler",
        required=True,
        metavar="SETTING",
        help=f"{SAMPLER_SETTING_HELP}, e.g. ddim-25-quad-eta1 or ancestral-1000-clip",
    )
    p.add_argument(
        "--limit",
        type=_non_negative,
        default=None,
        help="N slices spread evenly over the split (0 = all; default: evaluate.sampler_slices)",
    )
    p.add_argument(
        "--chains",
        type=_non_negative,
        default=None,
        help="chains per slice, each with its own seeds (default: evaluate.sampler_chains)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--shard-out", type=Path, required=True, help="translated shard (.npz)")
    p.add_argument("--translations-out", type=Path, required=True, help="joined translations (.npz)")
    p.add_argument("--out", type=Path, required=True, help="per-slice metrics (.csv)")
    p.add_argument(
        "--published",
        type=Path,
        default=None,
        help="folder written by 'lmid publish': reuse its scores of this setting once the first "
        "evaluate.published_sweep_check slices, re-sampled, give the same scores",
    )
    p.set_defaults(func=_sampler_sweep)

    p = sub.add_parser(
        "publish",
        help="gather a run's trained models into a committable folder",
        description="Copy every method's inference weights (model.pt, train_info.json, train_log.csv) "
        "and the segmenter into OUT with SHA256SUMS, a manifest of training fingerprints "
        "and a README (lmid/published.py).",
    )
    add_common(p)
    p.add_argument("--models", type=Path, required=True, help="the run's model folder, e.g. data/study/models")
    p.add_argument("--train", type=Path, required=True, help="the training split the models were trained on (.npz)")
    p.add_argument(
        "--diagnostics",
        type=Path,
        default=None,
        help="the run's diagnostics.json (its convergence curve is kept in curves.json)",
    )
    p.add_argument(
        "--baselines",
        type=Path,
        default=None,
        help="the run's baselines.json (its snapshot curves are kept in curves.json)",
    )
    p.add_argument("--test", type=Path, default=None, help="with --scores: the test split the scores are of (.npz)")
    p.add_argument(
        "--scores",
        type=Path,
        default=None,
        help="per-slice scores of one method on --test (metrics/<experiment>/<method>.csv): the first 3 "
        "slices and their scores are kept as check/, for reproducing them from the weights",
    )
    p.add_argument(
        "--sampler-scores",
        type=Path,
        nargs="+",
        default=[],
        help="the run's sampler sweep scores (metrics/sampler/<setting>.csv), kept as sampler/ so a run "
        "from these weights can check and reuse them; with --val",
    )
    p.add_argument("--val", type=Path, default=None, help="with --sampler-scores: the validation split they score")
    p.add_argument("--commit", default=None, help="commit the models were trained on (default: git HEAD)")
    p.add_argument("--limit-mb", type=float, default=60.0, help="refuse a folder larger than this (default 60)")
    p.add_argument("--out", type=Path, required=True, help="folder to write, e.g. models/study")
    p.set_defaults(func=_publish)

    p = sub.add_parser(
        "use-published",
        help="the train step from published weights (checked, not trained)",
        description="Check a published method's sha256 and training fingerprint against these params "
        "and this training split, then copy it where 'lmid train' would write.",
    )
    add_common(p)
    p.add_argument("--published", type=Path, required=True, help="folder written by 'lmid publish'")
    p.add_argument("--method", choices=METHOD_NAMES, required=True)
    p.add_argument("--train", type=Path, required=True, help="training split (.npz) of this run")
    p.add_argument("--out", type=Path, required=True, help="model folder, e.g. data/study/models/lmidiffusion")
    p.set_defaults(func=_use_published)

    p = sub.add_parser(
        "apply",
        help="translate one scan (NIfTI in, NIfTI out) with a trained method",
        description="Translate one source volume with a trained method: reorient, find the brain, normalise "
        "and cut axial slices as 'lmid prepare' does, translate every slice that holds brain, and write the "
        "translation on the input's own grid and affine, values in [0, 1] (lmid/apply.py).",
    )
    add_common(
        p,
        params_default=None,
        params_help="parameter file the model was trained with (default: the published folder's "
        "params.yaml, else params.yaml)",
    )
    p.add_argument("--input", type=Path, required=True, help="the scan to translate (3-D NIfTI of the source modality)")
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        help="model.pt written by 'lmid train', or a folder written by 'lmid publish' (with --method)",
    )
    p.add_argument(
        "--method", choices=METHOD_NAMES, default=None, help="which method (required for a published folder)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="translated volume to write (.nii.gz or .nii); required, except for a segmentation reference "
        "(synthseg), which translates nothing and refuses it",
    )
    p.add_argument(
        "--segment",
        type=Path,
        default=None,
        help="also write the K-Means labels of the translation here (synthseg: its own labels of the scan)",
    )
    p.add_argument(
        "--segmenter",
        type=Path,
        default=None,
        help="with --segment: kmeans.json of 'lmid fit-segmenter' (default: the published folder's)",
    )
    p.add_argument(
        "--strip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skull-strip the input with BET before normalising (default: when the model was trained on heads, "
        "i.e. prepare.brain_mask resolves to strip); --no-strip takes the foreground as the brain",
    )
    p.add_argument("--batch-size", type=_positive, default=16, help="slices per translation call (default 16)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    p.set_defaults(func=_apply)

    p = sub.add_parser("gather", help="join translated shards; write NIfTI volumes per subject")
    p.add_argument("--method", choices=METHOD_NAMES, required=True)
    p.add_argument("--shards", type=Path, nargs="+", required=True)
    p.add_argument("--slices", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--nifti-dir", type=Path, default=None)
    p.set_defaults(func=_gather)


def _train(args) -> None:
    from lmid.methods.runner import train_method

    train_method(load_params_from_args(args), args.method, args.train, args.val, args.out, args.device)


def _publish(args) -> None:
    from lmid.errors import LmidError
    from lmid.io import read_json
    from lmid.published import publish

    if (args.test is None) != (args.scores is None):
        raise LmidError("--test and --scores go together (the published check needs both)")
    from lmid.report.environment import git_commit

    curves = {}
    if args.diagnostics is not None:
        d = read_json(args.diagnostics)
        curves["convergence"] = d.get("convergence", [])
        curves["convergence_verdict"] = d.get("convergence_verdict")
    if args.baselines is not None:
        baselines = read_json(args.baselines)
        curves["baselines"] = baselines.get("curves", {})
        curves["ddpm_snapshots"] = baselines.get("methods", {}).get("sdedit", {}).get("snapshots", [])
    publish(
        load_params_from_args(args),
        args.models,
        args.train,
        args.out,
        curves=curves,
        commit=args.commit or git_commit()["commit"],
        limit_mb=args.limit_mb,
        test_path=args.test,
        scores_path=args.scores,
        sampler_scores=args.sampler_scores,
        val_path=args.val,
    )


def _use_published(args) -> None:
    from lmid.published import use_published

    use_published(load_params_from_args(args), args.published, args.method, args.train, args.out)


def _sampler_overrides(args) -> None:
    """``--sampler SETTING`` (:func:`lmid.config.parse_sampler_setting`) as ``--set lmidiffusion.sampler.*``
    overrides."""
    from lmid.config import parse_sampler_setting
    from lmid.errors import ParamsError

    try:
        setting = parse_sampler_setting(args.sampler)
    except ValueError as err:
        raise ParamsError(f"--sampler: {err}") from None
    args.overrides += [f"lmidiffusion.sampler.{k}={v}" for k, v in setting.items()]


def _sampler_sweep(args) -> None:
    from lmid.methods.runner import sweep_sampler

    _sampler_overrides(args)
    params = load_params_from_args(args)
    limit = params.evaluate.sampler_slices if args.limit is None else args.limit
    chains = params.evaluate.sampler_chains if args.chains is None else args.chains
    if chains < 1:
        from lmid.errors import ParamsError

        raise ParamsError(f"--chains {chains}: must be at least 1")
    sweep_sampler(
        params,
        args.model,
        args.slices,
        args.manifest,
        args.segmenter,
        args.shard_out,
        args.translations_out,
        args.out,
        limit=limit,
        device=args.device,
        chains=chains,
        published=args.published,
    )


def _translate(args) -> None:
    from lmid.errors import ParamsError
    from lmid.methods.runner import translate_shard

    if args.shard >= args.num_shards:
        raise ParamsError(
            f"--shard {args.shard}: must be one of 0..{args.num_shards - 1} (--num-shards {args.num_shards})"
        )
    if args.sampler:
        _sampler_overrides(args)
    translate_shard(
        load_params_from_args(args),
        args.method,
        args.model,
        args.slices,
        args.out,
        source_modality=args.source_modality,
        shard=args.shard,
        num_shards=args.num_shards,
        samples=args.samples,
        device=args.device,
        limit=args.limit,
    )


def _apply(args) -> None:
    from lmid.apply import apply_scan, resolve_model, segments
    from lmid.errors import ParamsError

    if args.segmenter is not None and args.segment is None:
        raise ParamsError("--segmenter is only read with --segment (where to write the labels)")
    ref = resolve_model(args.model, args.method)
    args.params = args.params or (str(ref.params) if ref.params else "params.yaml")
    own_labels = segments(ref)
    if own_labels and args.segmenter is not None:
        raise ParamsError(f"--segmenter: {ref.method} segments the scan with its own network; it reads no segmenter")
    apply_scan(
        load_params_from_args(args),
        ref,
        args.input,
        args.out,
        segment_path=args.segment,
        segmenter_path=None if own_labels else args.segmenter or (ref.segmenter if args.segment is not None else None),
        strip=args.strip,
        batch_size=args.batch_size,
        device=args.device,
    )


def _gather(args) -> None:
    from lmid.methods.runner import gather

    gather(args.method, args.shards, args.slices, args.manifest, args.out, args.nifti_dir)


def _non_negative(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative (0 means every slice)")
    return value


def _whole_number(text: str) -> int:
    import argparse

    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _positive(text: str) -> int:
    import argparse

    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _non_negative_index(text: str) -> int:
    import argparse

    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: must be 0 or more")
    return value
