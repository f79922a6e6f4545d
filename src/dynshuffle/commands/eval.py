"""`dynshuffle eval`: top-1/top-5 of a checkpoint (exact permutation and soft matrices) and its profile row."""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a .safetensors checkpoint (its .state.pt is not needed) or a run folder (last)")
    parser.add_argument("--data", metavar="PATH", help="dataset root folder (default: the one it was trained on)")
    parser.add_argument("--dataset", metavar="NAME", help="dataset name (default: the one it was trained on)")
    parser.add_argument("--split", default="val", choices=("val", "train"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes (default 0)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads (default: torch's, i.e. OMP_NUM_THREADS when set, else one per core)")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def run(args: argparse.Namespace) -> int:
    from dynshuffle.commands.train import set_threads
    from dynshuffle.training.evaluate import evaluate_checkpoint

    set_threads(args.threads)
    r = evaluate_checkpoint(args.checkpoint, data=args.dataset, data_root=args.data, split=args.split,
                            batch_size=args.batch_size, device=args.device, workers=args.workers)
    epoch = f" (epoch {r['epoch']})" if r.get("epoch") else ""
    print(f"checkpoint {r['checkpoint']}{epoch}: {r['dataset']} {r['split']}, {r['hard']['count']} images")
    hard, soft = r["hard"], r["soft"]
    label = "hard permutation" if soft is not None else "model"
    print(f"top-1 {_pct(hard['top1'])}  top-5 {_pct(hard['top5'])}  loss {hard['loss']:.4f}  ({label})")
    if soft is not None:
        print(f"top-1 {_pct(soft['top1'])}  top-5 {_pct(soft['top5'])}  loss {soft['loss']:.4f}  (soft matrices; "
              f"soft - hard {100 * (soft['top1'] - hard['top1']):+.2f} points)")
    macs = f"{r['macs'] / 1e6:.2f} M" if r.get("macs") is not None else "n/a"
    print(f"params {r['params'] / 1e6:.3f} M  multiply-adds {macs}")
    return 0
