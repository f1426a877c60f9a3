"""Evaluation steps: ``fit-segmenter``, ``evaluate``, ``aggregate`` and ``report``."""

from __future__ import annotations

from pathlib import Path

from lmid.cli import add_common, load_params_from_args
from lmid.config import METHOD_NAMES


def register(sub) -> None:
    p = sub.add_parser(
        "fit-segmenter",
        help="fit the target-only K-Means segmenter",
        description="Fit K-Means (section 'segment') on TARGET intensities of the training slices inside the "
        "brain mask; clusters map to CSF/GM/WM by centroid intensity. Written as JSON (no pickle).",
    )
    add_common(p)
    p.add_argument("--train", type=Path, required=True, help="training split (.npz)")
    p.add_argument("--out", type=Path, required=True, help="segmenter (.json), e.g. data/models/kmeans.json")
    p.set_defaults(func=_fit_segmenter)

    p = sub.add_parser(
        "evaluate",
        help="Dice, PSNR and SSIM per translated slice",
        description="Segment one method's translations and the real target slices with the K-Means segmenter and "
        "write one CSV row per slice: Dice (vs ground truth and vs K-Means of the real target), "
        "PSNR and SSIM (whole slice and brain mask), NFE and time per slice.",
    )
    add_common(p)
    p.add_argument("--method", choices=METHOD_NAMES, required=True)
    p.add_argument("--translations", type=Path, required=True, help="translations.npz written by 'lmid gather'")
    p.add_argument("--slices", type=Path, required=True, help="the split that was translated (.npz)")
    p.add_argument("--segmenter", type=Path, required=True, help="JSON written by 'lmid fit-segmenter'")
    p.add_argument("--out", type=Path, required=True, help="per-slice metrics (.csv)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "diagnose",
        help="LMIDiffusion diagnostics: conditioning ablation, oracle, convergence curve",
        description="On validation slices: the network's ε-loss with true and with shuffled LMI channels, the real "
        "target translated as if it were the source (oracle), and the translation scored at every "
        "training snapshot (MODEL_DIR/snapshots/step*.pt). Written as one JSON file.",
    )
    add_common(p)
    p.add_argument("--model", type=Path, required=True, help="LMIDiffusion model.pt")
    p.add_argument(
        "--snapshots-dir",
        type=Path,
        default=None,
        help="folder of training snapshots step*.pt (default: MODEL_DIR/snapshots)",
    )
    p.add_argument("--val", type=Path, required=True, help="validation split (.npz)")
    p.add_argument("--segmenter", type=Path, required=True, help="JSON written by 'lmid fit-segmenter'")
    p.add_argument(
        "--slices",
        type=int,
        default=None,
        help="validation slices, spread over every subject (0 = all; default: evaluate.diagnostic_slices)",
    )
    p.add_argument(
        "--unseen-val",
        type=Path,
        default=None,
        help="validation split of the unseen protocol: its sources join the conditioning-shift measurement",
    )
    p.add_argument(
        "--published",
        type=Path,
        default=None,
        help="folder written by 'lmid publish': with no snapshots, its curves.json gives the convergence curve",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, required=True, help="diagnostics (.json)")
    p.set_defaults(func=_diagnose)

    p = sub.add_parser(
        "check-baselines",
        help="sanity evidence for the baselines: samples, histograms, both directions",
        description="StyleGAN2-ADA's random samples and SDEdit's unconditional DDPM samples against real target "
        "slices (foreground intensity histograms), and CycleGAN's two directions and cycles on the test "
        "split. Numbers to a JSON file, the images the report shows to an .npz file.",
    )
    add_common(p)
    p.add_argument(
        "--models",
        type=Path,
        nargs="+",
        required=True,
        help="trained models, e.g. data/models/stylegan2/model.pt (the folder names the method)",
    )
    p.add_argument("--test", type=Path, required=True, help="test split (.npz)")
    p.add_argument("--samples", type=int, default=16, help="samples per generator (default %(default)s)")
    p.add_argument(
        "--val",
        type=Path,
        default=None,
        help="validation split (.npz): with --segmenter, every method's training snapshots are scored "
        "on evaluate.diagnostic_slices of it (the curves of the compute-matched figure)",
    )
    p.add_argument("--segmenter", type=Path, default=None, help="JSON written by 'lmid fit-segmenter'")
    p.add_argument(
        "--published",
        type=Path,
        default=None,
        help="folder written by 'lmid publish': the snapshot curves come from its curves.json",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, required=True, help="numbers (.json), e.g. reports/baselines.json")
    p.add_argument("--images", type=Path, required=True, help="images (.npz), e.g. data/baselines/samples.npz")
    p.set_defaults(func=_check_baselines)

    p = sub.add_parser(
        "aggregate",
        help="the paper's table with CIs and tests; DVC metrics",
        description="Summarise the per-slice score files <experiment>/<method>.csv (and the sampler table's "
        "<setting>.csv) into OUT_DIR/metrics.json, OUT_DIR/summary.json and OUT_DIR/tables/ (Markdown, "
        "CSV, LaTeX), with the paper's numbers beside ours (section 'evaluate'). Only the files named "
        "are read.",
    )
    add_common(p)
    p.add_argument(
        "--scores",
        type=Path,
        nargs="+",
        required=True,
        help="per-slice metrics, e.g. data/metrics/pd2t1/lmidiffusion.csv (from 'lmid evaluate')",
    )
    p.add_argument(
        "--sampler",
        type=Path,
        nargs="*",
        default=[],
        help="sampler-table scores, e.g. data/metrics/sampler/ddim-50.csv",
    )
    p.add_argument(
        "--infos",
        type=Path,
        nargs="*",
        default=[],
        help="training facts, e.g. data/models/lmidiffusion/train_info.json",
    )
    p.add_argument("--manifest", type=Path, default=None, help="the slices' manifest.json")
    p.add_argument("--out-dir", type=Path, required=True, help="e.g. reports")
    p.set_defaults(func=_aggregate)

    p = sub.add_parser(
        "report",
        help="figures and the self-contained HTML report",
        description="Draw the figures into REPORTS_DIR/figures/ and write one self-contained HTML file (images "
        "embedded, no external references) with the tables, figures, parameters, data, protocol "
        "choices, software versions and timings (section 'report').",
    )
    add_common(p)
    p.add_argument("--reports-dir", type=Path, required=True, help="folder with summary.json from 'lmid aggregate'")
    p.add_argument("--models-dir", type=Path, required=True, help="e.g. data/models")
    p.add_argument("--metrics-dir", type=Path, required=True, help="e.g. data/metrics")
    p.add_argument("--translations-dir", type=Path, required=True, help="e.g. data/translations")
    p.add_argument("--slices-dir", type=Path, required=True, help="e.g. data/slices")
    p.add_argument(
        "--unseen-slices-dir",
        type=Path,
        default=None,
        help="slices of the unseen protocol, e.g. data/slices_3t (its experiments' figures)",
    )
    p.add_argument(
        "--baseline-images",
        type=Path,
        default=None,
        help="images written by 'lmid check-baselines' (its numbers are read from REPORTS_DIR/baselines.json)",
    )
    p.add_argument("--out", type=Path, required=True, help="HTML file, e.g. reports/index.html")
    p.set_defaults(func=_report)


def _fit_segmenter(args) -> None:
    from lmid.evaluation.segment import fit_segmenter_cmd

    fit_segmenter_cmd(load_params_from_args(args), args.train, args.out)


def _evaluate(args) -> None:
    from lmid.evaluation.metrics import evaluate_translations

    load_params_from_args(args)  # validates the file even though scoring needs no parameter
    evaluate_translations(args.method, args.translations, args.slices, args.segmenter, args.out)


def _diagnose(args) -> None:
    from lmid.errors import LmidError
    from lmid.evaluation.diagnostics import diagnose

    if args.slices is not None and args.slices < 0:
        raise LmidError(f"--slices must be >= 0, got {args.slices}")
    folder = args.snapshots_dir or args.model.parent / "snapshots"
    snapshots = sorted(folder.glob("step*.pt")) if folder.is_dir() else []
    diagnose(
        load_params_from_args(args),
        args.model,
        snapshots,
        args.val,
        args.segmenter,
        args.out,
        slices=args.slices,
        device=args.device,
        unseen_val_path=args.unseen_val,
        published_curves=_published_curves(args.published),
    )


def _check_baselines(args) -> None:
    from lmid.errors import LmidError
    from lmid.evaluation.baselines import check_baselines

    if args.samples < 1:
        raise LmidError(f"--samples must be >= 1, got {args.samples}")
    if (args.val is None) != (args.segmenter is None):
        raise LmidError("--val and --segmenter go together (the snapshot curves need both)")
    check_baselines(
        load_params_from_args(args),
        args.models,
        args.test,
        args.out,
        args.images,
        samples=args.samples,
        device=args.device,
        val_path=args.val,
        segmenter_path=args.segmenter,
        published_curves=_published_curves(args.published),
    )


def _published_curves(folder):
    if folder is None:
        return None
    from lmid.published import published_curves

    return published_curves(folder)


def _aggregate(args) -> None:
    from lmid.cli import refuse_overwriting_inputs
    from lmid.evaluation.aggregate import aggregate, aggregate_outputs

    params = load_params_from_args(args)
    # The files it writes into --out-dir, each of which must not be one of the files it reads.
    written = [("--out-dir", str(args.out_dir / name)) for name in aggregate_outputs(params)]
    refuse_overwriting_inputs("aggregate", args, outputs=written)
    aggregate(params, args.scores, args.out_dir, infos=args.infos, manifest=args.manifest, sampler=args.sampler)


def _report(args) -> None:
    from lmid.errors import LmidError
    from lmid.report.html import build_report

    # The report turns a missing optional input into a "not run" note; a mistyped folder would
    # become a page of such notes with exit status 0, so the folders themselves must be there.
    folders = [
        ("--reports-dir", args.reports_dir),
        ("--models-dir", args.models_dir),
        ("--metrics-dir", args.metrics_dir),
        ("--translations-dir", args.translations_dir),
        ("--slices-dir", args.slices_dir),
        ("--unseen-slices-dir", args.unseen_slices_dir),
    ]
    for flag, folder in folders:
        if folder is not None and not folder.is_dir():
            raise LmidError(f"{flag} {folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    for flag, folder in folders[-2:]:
        if folder is not None and not (folder / "test.npz").is_file():
            raise LmidError(f"{flag} {folder}: holds no test.npz (the folder 'lmid prepare' wrote?)")
    build_report(
        load_params_from_args(args),
        args.params,
        args.reports_dir,
        args.models_dir,
        args.metrics_dir,
        args.translations_dir,
        args.slices_dir,
        args.out,
        unseen_slices_dir=args.unseen_slices_dir,
        baseline_images_path=args.baseline_images,
    )
