"""The `dynshuffle` command line: a thin shell over functions a user can call from Python.

Each subcommand lives in `dynshuffle.commands.<name>` and provides `configure(parser)` and
`run(args) -> int`; modules are imported only when their subcommand runs, so `dynshuffle --help`
stays fast and a missing optional dependency of one command cannot break another.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from dynshuffle.utils import command_line_names

COMMANDS = {
    "train": "train a model from a YAML recipe",
    "eval": "evaluate a checkpoint (top-1/top-5 and the profile row)",
    "compare": "train several shuffle variants on the same data and seeds, print one table (the main job)",
    "profile": "params, multiply-adds, FLOPs and peak memory of a registered model",
    "export": "export a checkpoint's inference graph to ONNX",
    "show": "pictures of the generated permutations of a checkpoint",
    "bench": "layer and model benchmarks, ratios to baselines measured in the same run",
    "models": "list the registered model names",
    "datasets": "list the registered datasets: classes, image size and where the data is found",
}


class CommandError(Exception):
    """An error a command reports as one clear line (exit code 2), without a stack trace."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynshuffle", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=f"dynshuffle.commands.{name}")
        _command_module(name).configure(p)
    return parser


def _version() -> str:
    try:
        return version("dynshuffle")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown"


def _message(err: BaseException) -> str:
    """One line for an error: a missing file as 'not found: PATH', a KeyError without its quotes."""
    if isinstance(err, FileNotFoundError) and err.filename:  # raised by the OS: "[Errno 2] No such file ..."
        return f"not found: {err.filename}"
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)


def _command_module(name: str):
    return importlib.import_module(f"dynshuffle.commands.{name}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        with command_line_names():  # errors name flags (--overwrite), not Python arguments (overwrite=True)
            return int(module.run(args) or 0)
    except (CommandError, ValueError, KeyError, OSError) as err:
        # Library errors on bad input carry a message naming the problem: show that line, not a trace.
        if os.environ.get("DYNSHUFFLE_DEBUG"):
            raise
        print(f"dynshuffle {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dynshuffle {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
