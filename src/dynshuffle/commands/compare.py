"""`dynshuffle compare`: train shuffle variants on the same data, recipe and seeds; print and save one table."""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="variants to train (default: static learned dynamic sds; also dynamic+sds, none)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: the recipe's, 6 on digits)")
    parser.add_argument("--data", default="digits", metavar="NAME",
                        help="dataset name (default: digits, bundled, offline)")
    parser.add_argument("--data-root", metavar="PATH", help="dataset root folder (all but digits)")
    parser.add_argument("--model", default="shufflenet_v2_x0_5", help="model name (default shufflenet_v2_x0_5)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key for every run, e.g. --set shuffle.lambda=0.5")
    parser.add_argument("--out", default="runs/compare", metavar="DIR",
                        help="output folder: compare.md, compare.csv and one run folder per training")


def run(args: argparse.Namespace) -> int:
    from dynshuffle.training.compare import compare

    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    compare(args.variants, seeds=args.seeds, epochs=args.epochs, data=args.data, out=args.out,
            data_root=args.data_root, model=args.model, overrides=args.overrides)
    return 0
