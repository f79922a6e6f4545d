"""Model benchmark: latency and memory of each shuffle variant, as ratios to the fixed shuffle.

One run prints one table. For every model setup (default: ShuffleNetV2 0.5x and 1.0x with the CIFAR stem
at 32x32, 1.0x with the ImageNet stem at 224x224) and every variant (static / learned / dynamic / sds):

- eval latency at batch 1 and 64 (eval mode, torch.no_grad: the dynamic shuffle is a gather),
- one training step at batch 64 (forward, cross-entropy + orthogonality penalty, backward, SGD step),
- peak memory of a training step (CUDA: the allocator's peak; CPU: the activations saved for backward,
  `dynshuffle.profiling.counting.peak_activation_bytes`).

Each timing is the median of several repeats after warm-up, with the variants interleaved inside every
repeat (so a slow phase of a shared machine hits all variants alike); ratios are to the first variant
(static) measured in the same run.

    python benchmarks/bench_models.py [--device cuda] [--quick] [--json OUT] [--threads N] [--compile]

The measuring function is `dynshuffle.profiling.benchmark.run_model_benchmark(...) -> list[dict]` (and
`format_model_rows`), so other commands reuse it without this script.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from dynshuffle.profiling.benchmark import MODEL_BENCH_VARIANTS, format_model_rows, run_model_benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: ShuffleNetV2 0.5x CIFAR only, batches 1/8, 1 warm-up, 2 repeats")
    parser.add_argument("--json", metavar="OUT", default=None, help="write the raw rows as JSON")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 10, quick 2)")
    parser.add_argument("--compile", action="store_true", help="time torch.compile'd models")
    parser.add_argument("--variants", default="static,learned,dynamic,sds",
                        help=f"comma-separated, the first is the baseline; of {','.join(MODEL_BENCH_VARIANTS)}")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rows = run_model_benchmark(variants=variants, device=args.device, repeats=args.repeats, quick=args.quick,
                               compile=args.compile, progress=not args.quick)
    repeats = args.repeats or (2 if args.quick else 10)
    print(f"# model benchmark (device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
          f"{', compiled' if args.compile else ''}); median of {repeats} repeats after warm-up; "
          f"ratios to {variants[0]}")
    print(format_model_rows(rows))
    if args.json:
        from dynshuffle.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
