"""`dynshuffle compare`: train shuffle variants on the same data, recipe and seeds; print and save one table."""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="variants to train (default: static learned dynamic sds; also dynamic+sds, none)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: the recipe's, 6 on digits)")
    parser.add_argument("--dataset", default="digits", metavar="NAME",
                        help="dataset name (default: digits, bundled, offline)")
    parser.add_argument("--data", metavar="PATH", help="dataset root folder (all but digits), as in train and eval")
    parser.add_argument("--data-root", dest="data", metavar="PATH", help=argparse.SUPPRESS)  # the former name
    parser.add_argument("--download", action="store_true",
                        help="fetch the dataset into --data first if it is missing (CIFAR, Fashion-MNIST)")
    parser.add_argument("--model", default="shufflenet_v2_x0_5", help="model name (default shufflenet_v2_x0_5)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key for every run, e.g. --set shuffle.lambda=0.5")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="parallel training processes of one thread each (default: one per CPU core, "
                             "at most one per run; 1 trains in this process)")
    parser.add_argument("--out", default="runs/compare", metavar="DIR",
                        help="output folder: compare.md, compare.csv and one run folder per training "
                             "(a rerun keeps the runs finished with the same recipe)")
    parser.add_argument("--merge", nargs="+", metavar="DIR",
                        help="train nothing: write one table and one top-1-against-multiply-adds picture of these "
                             "finished compare folders into --out (e.g. two widths of a model)")
    parser.add_argument("--title", help="title of the --merge table and picture")
    parser.add_argument("--overwrite", action="store_true",
                        help="train every run afresh, even if --out holds runs of another recipe")


def run(args: argparse.Namespace) -> int:
    """Train and write the table; Ctrl-C stops the workers, writes the table of the finished runs and exits 130
    (the CLI's KeyboardInterrupt exit)."""
    from dynshuffle.training.compare import compare, merge_compares

    if args.merge:
        merge_compares(args.merge, args.out, title=args.title)
        return 0
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.data is not None:
        import os

        from dynshuffle.data.registry import list_datasets

        if not os.path.exists(args.data) and args.data in list_datasets():
            raise ValueError(f"--data is the dataset root folder (as in train and eval); to choose the dataset "
                             f"use --dataset {args.data}")
    compare(args.variants, seeds=args.seeds, epochs=args.epochs, dataset=args.dataset, out=args.out,
            data_root=args.data, download=args.download, model=args.model, overrides=args.overrides,
            workers=args.workers,
            overwrite=args.overwrite)
    return 0
