"""Layer benchmark: dynamic shuffle paths against nn.ChannelShuffle and a 1x1 convolution, measured in one run.

    python benchmarks/bench_layers.py [--device cpu|cuda] [--batches 1 64] [--compile] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import platform

import torch

from dynshuffle.profiling.benchmark import format_rows, run_layer_benchmark
from dynshuffle.utils import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stems", nargs="+", default=["imagenet", "cifar"], choices=["imagenet", "cifar"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compile", action="store_true", help="torch.compile the modules under test")
    parser.add_argument("--quick", action="store_true", help="one shape, few repeats (smoke test)")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    rows = run_layer_benchmark(args.device, args.stems, args.batches, args.repeats, args.compile, args.quick)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"torch {torch.__version__}, device {args.device} ({device_name}), threads {torch.get_num_threads()}")
    print(format_rows(rows))
    if args.json:
        atomic_write_text(args.json, json.dumps([r.as_dict() for r in rows], indent=2))


if __name__ == "__main__":
    main()
