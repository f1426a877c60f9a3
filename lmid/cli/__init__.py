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

from lmid.errors import LmidError
from lmid.progress import progress_disabled  # noqa: F401  (re-exported for the commands)

# Step groups, each registering its sub-commands (kept apart so they stay short).
_GROUPS = ("lmid.cli.data", "lmid.cli.methods", "lmid.cli.evaluation")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter, e.g. --set diffusion.train.steps=10 (YAML value; repeatable)")


def load_params_from_args(args):
    import yaml

    from lmid.config import load_params

    overrides: dict = {}
    for item in args.overrides:
        if "=" not in item:
            raise LmidError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        node = overrides
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return load_params(args.params, overrides)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="lmid", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<step>")
    for name in _GROUPS:
        importlib.import_module(name).register(sub)
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
    except KeyboardInterrupt:
        print(f"lmid {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


