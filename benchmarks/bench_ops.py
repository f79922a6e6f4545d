"""Operators per step: kernel-launching operators per train step and eval forward, as ratios to the fixed model.

For each shuffle variant of the model (static / learned / dynamic / sds): the operators dispatched by one
training step (straight-through and soft) and one eval forward, their ratio to the fixed-shuffle model, the
excess per shuffle module and the operators added most (`dynshuffle.profiling.operators`). A count, not a
timing: the same on every machine and load, and the host-side cost that bounds a small CNN's GPU step.

    python benchmarks/bench_ops.py [--model shufflenet_v2_x0_5] [--stem cifar] [--size 32] [--batch 8] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys

from dynshuffle.profiling.operators import format_operator_rows, operator_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v2_x0_5")
    parser.add_argument("--stem", default="cifar")
    parser.add_argument("--size", type=int, default=32, help="input size (default 32)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--json", metavar="OUT", default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    rows = operator_report(args.model, args.stem, args.size, args.batch)
    print(format_operator_rows(rows, markdown=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
