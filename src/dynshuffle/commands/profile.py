"""`dynshuffle profile MODEL`: parameters, multiply-adds, training FLOPs and activation memory."""
from __future__ import annotations

import argparse

_NUM_CLASSES = {"imagenet": 1000, "tiny": 200, "cifar": 10}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="registered model name (see `dynshuffle models`)")
    parser.add_argument("--shuffle", default="static", choices=("static", "learned", "dynamic", "none"))
    parser.add_argument("--pointwise", default="conv", choices=("conv", "sds"))
    parser.add_argument("--stem", default="imagenet", choices=("imagenet", "tiny", "cifar"))
    parser.add_argument("--input-size", type=int, default=None,
                        help="image side in pixels (default: the stem's, 224 / 64 / 32)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier outputs (default: 1000 imagenet, 200 tiny, 10 cifar)")
    parser.add_argument("--batch", type=int, default=8, help="batch of the activation-memory measurement")
    parser.add_argument("--shuffle-groups", type=int, default=None, help="G of the shuffle modules")
    parser.add_argument("--hidden", type=int, default=None, help="generator width of dynamic/SDS modules")
    parser.add_argument("--device", default=None, help="device of the measuring forwards (default cpu)")
    parser.add_argument("--compare", action="store_true",
                        help="profile static, learned, dynamic and SDS side by side, with overheads over static")
    parser.add_argument("--json", metavar="OUT", default=None, help="also write the rows as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from dynshuffle.models.blocks import STEM_INPUT_SIZE
    from dynshuffle.profiling.formatting import format_table
    from dynshuffle.profiling.reporting import profile_rows
    from dynshuffle.utils import atomic_write_text

    common = {"stem": args.stem,
              "num_classes": args.num_classes if args.num_classes is not None else _NUM_CLASSES[args.stem]}
    if args.shuffle_groups is not None:
        common["shuffle_groups"] = args.shuffle_groups
    if args.hidden is not None:
        common["hidden"] = args.hidden
    if args.compare:
        variants = [{"shuffle": "static", "pointwise": "conv"}, {"shuffle": "learned", "pointwise": "conv"},
                    {"shuffle": "dynamic", "pointwise": "conv"}, {"shuffle": "static", "pointwise": "sds"}]
        if not args.model.startswith("shufflenet_v1"):
            variants.append({"shuffle": "dynamic", "pointwise": "sds"})
        requested = {"shuffle": args.shuffle, "pointwise": args.pointwise}
        if requested not in variants:
            variants.append(requested)
    else:
        variants = [{"shuffle": args.shuffle, "pointwise": args.pointwise}]
    size = args.input_size if args.input_size is not None else STEM_INPUT_SIZE[args.stem]
    if size < 1 or args.batch < 1:
        raise ValueError(f"--input-size and --batch must be positive, got {size} and {args.batch}")
    rows = profile_rows(args.model, variants, size, flops=True, batch=args.batch, device=args.device, **common)
    if not args.compare:
        for row in rows:
            for key in ("+params", "+MACs", "+FLOPs"):
                row.pop(key, None)
    print(format_table(rows))
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0
