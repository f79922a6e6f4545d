"""`dynshuffle bench`: the layer and model benchmarks in one report (bench.md, bench.json).

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
    parser.add_argument("--quick", action="store_true", help="one shape, one batch size, few repeats (smoke test)")
    parser.add_argument("--layers-only", action="store_true", help="skip the model benchmark")
    parser.add_argument("--out", default="bench", metavar="DIR",
                        help="folder for bench.md and bench.json (default ./bench)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing bench.md / bench.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


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


def _markdown_table(rows: list[dict]) -> str:
    """Any list of flat dicts as a markdown table (columns in first-seen order; floats to 4 digits)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _format_models(B, rows: list[dict]) -> str:
    """The benchmark module's own markdown table when it has one, else a generic table of the rows."""
    import inspect

    fmt = getattr(B, "format_model_rows", None)
    if fmt is not None and "markdown" in inspect.signature(fmt).parameters:
        return fmt(rows, markdown=True)
    return _markdown_table(rows)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time
    from pathlib import Path

    out = Path(args.out)
    _check_out(out, args.force)
    device = _device(args.device)

    from dynshuffle import benchmark as B
    from dynshuffle.utils import atomic_write_text

    variants = [("eager", False)] + ([("torch.compile", True)] if args.compile else [])
    run_models = getattr(B, "run_model_benchmark", None)
    models_note = None
    if not args.layers_only and run_models is None:
        models_note = ("model benchmark not available in this version of dynshuffle.benchmark "
                       "(no run_model_benchmark); only the layer tables were measured")
        print(f"dynshuffle bench: {models_note}", file=sys.stderr)

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    tables: dict[str, dict[str, list]] = {"layers": {}, "models": {}}
    markdown: list[str] = []
    for label, compiled in variants:
        rows = B.run_layer_benchmark(device=str(device), compile=compiled, quick=args.quick, progress=not args.quiet)
        tables["layers"][label] = [r.as_dict() for r in rows]
        markdown += [f"## Layers ({label})", "",
                     "Ratio = operation / baseline, both timed alternately in this run (median of repeats); "
                     "target = the ratio the layer is designed to stay under.", "", B.format_rows(rows), ""]
        if not args.layers_only and run_models is not None:
            model_rows = run_models(device=str(device), compile=compiled, quick=args.quick, progress=not args.quiet)
            tables["models"][label] = [dict(r) for r in model_rows]
            markdown += [f"## Models ({label})", "",
                         "Ratio = variant / the fixed-shuffle (static) model, timed alternately in this run.", "",
                         _format_models(B, model_rows), ""]

    machine = _machine(device)
    header = [f"# dynshuffle bench ({started})", "",
              f"device {machine['device']}{' (' + machine['gpu'] + ')' if 'gpu' in machine else ''}, torch "
              f"{machine['torch']}, {machine['cpu_threads']} CPU threads; "
              f"{'quick run (one shape, few repeats); ' if args.quick else ''}"
              f"compile: {'eager and torch.compile' if args.compile else 'eager only'}.", "",
              "Absolute milliseconds depend on the machine and its load; the ratios are the comparable figures.", ""]
    if args.layers_only:
        header += ["Model benchmark skipped (--layers-only).", ""]
    elif models_note:
        header += [f"Note: {models_note}.", ""]
    report = {"started": started, "machine": machine, "quick": args.quick, "compile": args.compile,
              "layers_only": args.layers_only, "note": models_note, **tables}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.md", "\n".join(header + markdown).rstrip() + "\n")
    atomic_write_text(out / "bench.json", json.dumps(report, indent=1, default=str) + "\n")
    print("\n".join(markdown).rstrip())
    print(f"\nwrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0
