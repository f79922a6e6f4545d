"""`dynshuffle bench`: the layer and model benchmarks and the operator counts in one report (bench.md,
bench.json).

Every figure is a ratio to a baseline timed alternately with it in the same run (layers: to
nn.ChannelShuffle and to the 1x1 convolution; models: to the fixed-shuffle model), because absolute
times on a shared or throttled machine drift while such ratios stay comparable. With --compile each
table is produced twice, eager and torch.compile, in the same run.
"""
from __future__ import annotations

import argparse

FILES = ("bench.md", "bench.json")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--compile", action="store_true",
                        help="also run every benchmark with torch.compile (eager and compiled tables)")
    parser.add_argument("--quick", action="store_true",
                        help="one small layer shape at batch 64, the 0.5x model, few repeats (smoke test, < 1 min)")
    parser.add_argument("--layers-only", action="store_true", help="skip the model benchmark")
    parser.add_argument("--out", default="bench", metavar="DIR",
                        help="folder for bench.md and bench.json (default ./bench)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing bench.md / bench.json")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads (default: torch's, i.e. OMP_NUM_THREADS when set, else one per core)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress (default: a bar on a terminal, a plain line per step otherwise)")


def _check_out(out, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    existing = [name for name in FILES if (out / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite")


def _device(name: str):
    import torch

    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:N], got {name!r}")
    return dev


def _machine(device) -> dict:
    import os
    import platform

    import torch

    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


TARGET_BATCH = 64  # the layer targets (docs/performance.md) are ratios at batch 64; batch 1 is call overhead


def _judged_at_own_batch(rows: list) -> list:
    """Rows at a batch other than TARGET_BATCH carry no target: they get no yes/NO verdict."""
    import dataclasses

    return [r if r.batch == TARGET_BATCH else dataclasses.replace(r, target=None) for r in rows]


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from dynshuffle.commands.train import set_threads

    out = Path(args.out)
    _check_out(out, args.force)
    device = _device(args.device)
    set_threads(args.threads)

    from dynshuffle.profiling import benchmark as B
    from dynshuffle.utils import atomic_write_text

    variants = [("eager", False)] + ([("torch.compile", True)] if args.compile else [])
    # --quick: one small stage shape at the target batch (so its rows are judged), the quick model setup.
    layer_kwargs = {"stems": ("cifar",), "batches": (TARGET_BATCH,)} if args.quick else {}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    tables: dict[str, dict[str, list] | list] = {"layers": {}, "models": {}}
    markdown: list[str] = []
    for label, compiled in variants:
        rows = _judged_at_own_batch(B.run_layer_benchmark(device=str(device), compile=compiled, quick=args.quick,
                                                          progress=not args.quiet, **layer_kwargs))
        tables["layers"][label] = [r.as_dict() for r in rows]
        markdown += [f"## Layers ({label})", "",
                     "Ratio = operation / baseline, both timed alternately in this run (median of repeats); "
                     f"target = the ratio the layer is designed to stay under at batch {TARGET_BATCH} (rows at "
                     "other batches have none).", "", B.format_rows(rows), ""]
        if not args.layers_only:
            model_rows = B.run_model_benchmark(device=str(device), compile=compiled, quick=args.quick,
                                               progress=not args.quiet)
            tables["models"][label] = [dict(r) for r in model_rows]
            markdown += [f"## Models ({label})", "",
                         "Ratio = variant / the fixed-shuffle (static) model, timed alternately in this run.", "",
                         B.format_model_rows(model_rows, markdown=True), ""]

    from dynshuffle.profiling.operators import format_operator_rows, operator_report

    operator_rows = operator_report()
    tables["operators"] = [r.as_dict() for r in operator_rows]
    markdown += ["## Operators per step (CPU)", "",
                 "Kernel-launching operators dispatched per train step (forward, loss, backward) and per eval "
                 "forward, ShuffleNetV2 0.5x, CIFAR stem, batch 8; ratio to the fixed model; per module = the "
                 "excess per shuffle module. The host-side cost that bounds a small model's GPU step "
                 "(docs/performance.md).", "", format_operator_rows(operator_rows, markdown=True), ""]

    machine = _machine(device)
    header = [f"# dynshuffle bench ({started})", "",
              f"device {machine['device']}{' (' + machine['gpu'] + ')' if 'gpu' in machine else ''}, torch "
              f"{machine['torch']}, {machine['cpu_threads']} CPU threads; "
              f"{'quick run (one shape, few repeats); ' if args.quick else ''}"
              f"compile: {'eager and torch.compile' if args.compile else 'eager only'}.", "",
              "Absolute milliseconds depend on the machine and its load; the ratios are the comparable figures.", ""]
    if args.layers_only:
        header += ["Model benchmark skipped (--layers-only).", ""]
    report = {"started": started, "machine": machine, "quick": args.quick, "compile": args.compile,
              "layers_only": args.layers_only, **tables}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.md", "\n".join(header + markdown).rstrip() + "\n")
    atomic_write_text(out / "bench.json", json.dumps(report, indent=1, default=str) + "\n")
    print("\n".join(markdown).rstrip())
    print(f"\nwrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0
