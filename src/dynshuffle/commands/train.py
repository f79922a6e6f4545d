"""`dynshuffle train`: train a model from a YAML recipe into a run folder (resumable, torchrun-ready)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="YAML recipe (see configs/); with --resume it defaults to the run folder's config.yaml")
    parser.add_argument("--data", metavar="PATH", help="dataset root folder (sets data.root)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set optim.lr=0.05 (repeatable)")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/<config file name>)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, choices=["auto"],
                        help="continue the run in --out from last.state.pt; --resume auto: continue it when "
                             "--out holds one, else start afresh (the command line for torchrun --max-restarts; "
                             "config key train.resume)")
    parser.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a run")
    parser.add_argument("--download", action="store_true",
                        help="fetch the dataset into --data if it is missing (CIFAR, Fashion-MNIST; sets data.download=true)")
    parser.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                        help="torch.compile the train step and evaluation: --compile (mode default), --compile "
                             "max-autotune, or reduce-overhead (CUDA graphs, CUDA only) (config key train.compile)")
    parser.add_argument("--channels-last", action="store_true",
                        help="model and batches in channels-last memory format (sets train.channels_last=true)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads of this process (default: torch's, i.e. OMP_NUM_THREADS when set, else "
                             "one per core); on a busy machine --threads 1 is often faster")
    parser.epilog = ("Multi-GPU / multi-node: torchrun --nproc_per_node=N -m dynshuffle.cli train --config FILE "
                     "(the same command as a single process); add --max-restarts=3 to torchrun and --resume auto "
                     "to train to survive a lost process.")


def set_threads(threads: int | None) -> None:
    """--threads N: torch's intra-op CPU threads (None: leave torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    from dynshuffle.training.config import apply_overrides, load_config
    from dynshuffle.training.loop import train

    config_path = args.config
    if args.out:
        out = Path(args.out)
    elif config_path:
        out = Path("runs") / Path(config_path).stem
    else:
        raise ValueError("--config FILE is required (or --resume with --out DIR of an existing run)")
    if config_path is None:
        if not args.resume:
            raise ValueError("--config FILE is required unless --resume is given")
        config_path = out / "config.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"not found: {config_path} (--resume without --config reads the run's config; "
                                    f"a new run needs --config FILE)")
    set_threads(args.threads)
    cfg = load_config(config_path, args.overrides)
    if args.data:
        cfg.data.root = args.data
    if args.download:
        cfg.data.download = True
    if args.compile is not None or args.channels_last:
        flags = ([f"train.compile={args.compile}"] if args.compile is not None else []) + \
            (["train.channels_last=true"] if args.channels_last else [])
        cfg = apply_overrides(cfg, flags)  # checked like --set (reduce-overhead on a CPU device)
    result = train(cfg, out, resume=args.resume, overwrite=args.overwrite)
    final = result["final"]
    if final is not None and int(os.environ.get("RANK", "0")) == 0:
        soft = final.get("val_top1_soft")
        soft_text = f", soft matrices {100 * soft:.2f}%" if soft is not None else ""
        print(f"done: {out}  val top-1 {100 * final['val_top1']:.2f}%{soft_text}, "
              f"best {100 * result['best_top1']:.2f}%")
    return 0


if __name__ == "__main__":  # python -m dynshuffle.commands.train ...
    import sys

    from dynshuffle.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
