"""``lmid <step>``: one sub-command per pipeline step.

Each step takes explicit input and output paths and reads its section of ``params.yaml`` through
:func:`lmid.config.load_params`. The modules here only parse arguments and call the package.
Errors caused by input print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lmid.errors import LmidError, ParamsError


def add_common(p: argparse.ArgumentParser, params_default: str | None = "params.yaml", params_help: str = "") -> None:
    p.add_argument("--params", default=params_default, help=params_help or "parameter file (default: %(default)s)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter, e.g. --set diffusion.train.steps=10 (YAML value; repeatable)",
    )


def load_params_from_args(args):
    from lmid.config import load_params

    return load_params(args.params, parse_overrides(args.overrides), overrides_label="--set")


def parse_overrides(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items (dotted keys, YAML values) as one nested mapping."""
    import yaml

    from lmid.config import parse_yaml_value

    overrides: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.split(".")):
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. diffusion.train.steps=10")
        try:
            parsed = parse_yaml_value(value)  # plain data; 1e-3 is a number
        except yaml.YAMLError as err:
            raise ParamsError(f"--set {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
        node = overrides
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(
                    f"--set {item!r}: {'.'.join(parts[: depth + 1])} is set to a value by another --set, "
                    "so it has no keys"
                )
        if isinstance(node.get(parts[-1]), dict):
            raise ParamsError(f"--set {item!r}: another --set already sets keys under {key}")
        node[parts[-1]] = parsed
    return overrides


#: What each command reads and writes, by argument: inputs, output files, and output folders that
#: the command fills or replaces whole (``generate`` and ``prepare`` swap theirs in at the end).
COMMAND_PATHS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "generate": (("params",), (), ("out",)),
    "prepare": (("params", "raw"), (), ("out",)),
    "train": (("params", "train", "val"), (), ("out",)),
    "publish": (
        ("params", "models", "train", "diagnostics", "baselines", "test", "scores", "sampler_scores", "val"),
        (),
        ("out",),
    ),
    "use-published": (("params", "published", "train"), (), ("out",)),
    "apply": (("params", "input", "model", "segmenter"), ("out", "segment"), ()),
    "translate": (("params", "model", "slices"), ("out",), ()),
    "sampler-sweep": (
        ("params", "model", "slices", "manifest", "segmenter", "published"),
        ("shard_out", "translations_out", "out"),
        (),
    ),
    "gather": (("shards", "slices", "manifest"), ("out",), ("nifti_dir",)),
    "fit-segmenter": (("params", "train"), ("out",), ()),
    "evaluate": (("params", "translations", "slices", "segmenter"), ("out",), ()),
    "diagnose": (("params", "model", "snapshots_dir", "val", "unseen_val", "segmenter", "published"), ("out",), ()),
    "check-baselines": (("params", "models", "test", "val", "segmenter", "published"), ("out", "images"), ()),
    "aggregate": (("params", "scores", "sampler", "infos", "manifest"), ("out_dir",), ()),
    "report": (
        (
            "params",
            "reports_dir",
            "models_dir",
            "metrics_dir",
            "translations_dir",
            "slices_dir",
            "unseen_slices_dir",
            "baseline_images",
        ),
        ("out",),
        (),
    ),
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _named_paths(args, dests) -> list[tuple[str, str]]:
    """``(flag, path)`` for every path the arguments ``dests`` hold (lists give one each)."""
    out = []
    for dest in dests:
        value = getattr(args, dest, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and str(item) != "":
                out.append((_flag(dest), str(item)))
    return out


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def refuse_overwriting_inputs(command: str, args, inputs=(), outputs=()) -> None:
    """Stop before anything is written when an output file of ``command`` is an existing folder,
    when an output is one of its inputs (after resolving links), when two outputs are one file, or
    when an output folder that the command fills holds one of its inputs. ``inputs``/``outputs``:
    further ``(flag, path)`` pairs."""
    ins, file_dests, folders = COMMAND_PATHS.get(command, ((), (), ()))
    ins = _named_paths(args, ins) + list(inputs)
    files = _named_paths(args, file_dests) + list(outputs)
    folders = _named_paths(args, folders)
    # Before any work (the rename onto a folder would fail at the very end); an --out-dir is a folder.
    for flag, out in _named_paths(args, [d for d in file_dests if not d.endswith("_dir")]) + list(outputs):
        if os.path.isdir(out):
            raise LmidError(f"{flag} {out}: is a folder; give the path of the file to write")
    for flag, out in files + folders:
        for in_flag, inp in ins:
            if _same_file(out, inp):
                raise LmidError(
                    f"{flag} {out} is also the input {in_flag} {inp}: refusing to overwrite an input "
                    "(choose another output path)"
                )
    for flag, folder in folders:
        top = os.path.realpath(folder)
        for in_flag, inp in ins:
            where = os.path.realpath(inp)
            if where.startswith(top.rstrip(os.sep) + os.sep):
                raise LmidError(
                    f"{flag} {folder} holds the input {in_flag} {inp}: this step fills that folder "
                    "with its own files (choose another output folder)"
                )
    named = files + folders
    for i, (flag, out) in enumerate(named):
        for other_flag, other in named[i + 1 :]:
            if _same_file(out, other):
                raise LmidError(f"{flag} and {other_flag} name the same path {out}: each output needs its own")


def build_parser() -> argparse.ArgumentParser:
    # The step groups register their sub-commands; each command's function is in its group
    # (``lmid prepare`` -> lmid/cli/data.py:_prepare), which calls one function of the package.
    from lmid.cli import data, evaluation, methods

    parser = argparse.ArgumentParser(
        prog="lmid", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<step>")
    for group in (data, methods, evaluation):
        group.register(sub)
    p = sub.add_parser("schema", help="write the JSON schema of params.yaml (used by Snakemake's validate)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_schema)
    return parser


def _schema(args) -> None:
    from lmid.config import json_schema
    from lmid.io import write_json

    write_json(args.out, json_schema())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        refuse_overwriting_inputs(args.command, args)
        args.func(args)
    except LmidError as err:
        print(f"lmid {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder where a file should be, no permission, ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"lmid {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmid {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
