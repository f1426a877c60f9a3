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
from lmid.progress import progress_disabled  # noqa: F401  (re-exported for the commands)

def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter, e.g. --set diffusion.train.steps=10 (YAML value; repeatable)")


def load_params_from_args(args):
    import yaml

    from lmid.config import load_params

    overrides: dict = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.split(".")):
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. diffusion.train.steps=10")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ParamsError(f"--set {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
        node = overrides
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"--set {item!r}: {'.'.join(parts[:depth + 1])} is set to a value by another --set, "
                                  "so it has no keys")
        if isinstance(node.get(parts[-1]), dict):
            raise ParamsError(f"--set {item!r}: another --set already sets keys under {key}")
        node[parts[-1]] = parsed
    return load_params(args.params, overrides, overrides_label="--set")


def build_parser() -> argparse.ArgumentParser:
    # The step groups register their sub-commands; each command's function is in its group
    # (``lmid prepare`` -> lmid/cli/data.py:_prepare), which calls one function of the package.
    from lmid.cli import data, evaluation, methods

    parser = argparse.ArgumentParser(prog="lmid", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
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


