"""Data steps: ``generate`` (simulated IXI-layout volumes) and ``prepare`` (slices and splits)."""

from __future__ import annotations

from pathlib import Path

from lmid.cli import add_common, load_params_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="simulate multi-contrast brains in the IXI layout",
        description="Simulate T1/T2/PD-weighted brains with ground-truth labels from the MNI152 "
        "2009 template (section 'simulate' of params.yaml), written in the IXI layout.",
    )
    add_common(p)
    p.add_argument("--out", type=Path, required=True, help="output folder for the volumes")
    p.add_argument(
        "--protocol",
        choices=("main", "unseen"),
        default="main",
        help="main: section 'simulate'; unseen: the same subjects on the protocol of section "
        "'unseen_protocol' (tissue values, sequences, SNR), which no model trains on",
    )
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "prepare",
        help="axial slices, normalisation and subject-level splits",
        description="Read simulated, IXI or BraTS volumes (section 'data'), register if needed, "
        "and write train/val/test slice files plus a manifest (section 'prepare').",
    )
    add_common(p)
    p.add_argument("--raw", type=Path, default=None, help="folder of volumes (default: data.root)")
    p.add_argument("--out", type=Path, required=True, help="output folder for train/val/test.npz and manifest.json")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="subjects read (registered, skull-stripped) in parallel, one process each (default 1)",
    )
    p.set_defaults(func=_prepare)


def _generate(args) -> None:
    params = load_params_from_args(args)  # fail on bad params before any heavy import
    from lmid.data.phantom import generate

    if args.protocol == "unseen":
        params = params.unseen_simulation()
    generate(params, args.out, protocol=args.protocol)


def _prepare(args) -> None:
    params = load_params_from_args(args)
    from lmid.data.prepare import prepare
    from lmid.evaluation.bias_check import bias_check

    if args.threads < 1:
        from lmid.errors import LmidError

        raise LmidError(f"--threads: must be at least 1, got {args.threads}")
    prepare(params, args.raw or Path(params.data.root), args.out, workers=args.threads, bias_check=bias_check)
