"""`dynshuffle models [PATTERN]`: list the registered model names."""
from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default=None,
                        help="fnmatch pattern, e.g. 'shufflenet_v1_g3_*' (default: every model)")


def run(args: argparse.Namespace) -> int:
    from dynshuffle.models.registry import list_models

    names = list_models(args.pattern)
    if not names:
        print(f"dynshuffle models: no registered model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0
