"""Deployment benchmark: the dynamic model against the fixed one, exported and eager, as ratios.

For ShuffleNetV2 (CIFAR stem, 32x32, 10 classes; widths from --widths):

- ONNX: graph nodes of the exported dynamic / fixed model, and onnxruntime latency at batch 1 and 32,
  the two sessions timed alternately in one loop;
- eager PyTorch eval (`torch.no_grad`), dynamic (as trained, and fused with `fuse_for_inference`) / fixed,
  at batch 1 and 64;
- with --compile: `torch.compile(fullgraph=True)` of the dynamic model, eval and one training step,
  checked against eager, and timed against the compiled fixed model.

The dynamic model's generators get random head weights first, so that its permutations really depend on
the input (a fresh model is exactly the fixed shuffle). Run with one thread on a shared machine:

    python benchmarks/bench_deploy.py --threads 1 [--widths 0.5,1.0] [--repeats 15] [--compile]
"""
from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn


def _randomize_generators(model: nn.Module, seed: int = 0) -> nn.Module:
    from dynshuffle.layers.dynamic import DynamicShuffle

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DynamicShuffle):
                m.generator.head.weight.copy_(torch.randn(m.generator.head.weight.shape, generator=g))
    return model


def build_pair(width: float) -> tuple[nn.Module, nn.Module]:
    from dynshuffle import create_model

    name = f"shufflenet_v2_x{str(width).replace('.', '_')}"
    torch.manual_seed(0)
    fixed = create_model(name, num_classes=10, stem="cifar", shuffle="static").eval()
    dynamic = _randomize_generators(create_model(name, num_classes=10, stem="cifar", shuffle="dynamic")).eval()
    return fixed, dynamic


def onnx_rows(fixed: nn.Module, dynamic: nn.Module, repeats: int, threads: int) -> list[dict]:
    import onnx

    from dynshuffle.deploy.export import ort_session, export_onnx
    from dynshuffle.profiling.timing import time_pair

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for tag, model in (("fixed", fixed), ("dynamic", dynamic)):
            paths[tag] = export_onnx(model, Path(tmp) / f"{tag}.onnx", input_size=32)
        nodes = {tag: len(onnx.load(str(p)).graph.node) for tag, p in paths.items()}
        rows.append({"what": "ONNX nodes", "batch": "-", "fixed": nodes["fixed"], "dynamic": nodes["dynamic"],
                     "ratio": nodes["dynamic"] / nodes["fixed"]})
        sessions = {tag: ort_session(p, threads) for tag, p in paths.items()}
        for batch in (1, 32):
            feed = {"images": torch.randn(batch, 3, 32, 32).numpy()}
            dyn_s, fix_s = time_pair(lambda: sessions["dynamic"].run(None, feed),
                                     lambda: sessions["fixed"].run(None, feed), "cpu", repeats=repeats)
            rows.append({"what": "onnxruntime ms", "batch": batch, "fixed": fix_s * 1e3, "dynamic": dyn_s * 1e3,
                         "ratio": dyn_s / fix_s})
    return rows


def eager_rows(fixed: nn.Module, dynamic: nn.Module, repeats: int) -> list[dict]:
    from dynshuffle import fuse_for_inference
    from dynshuffle.profiling.timing import time_interleaved

    fused = fuse_for_inference(dynamic)
    rows = []
    with torch.no_grad():
        for batch in (1, 64):
            x = torch.randn(batch, 3, 32, 32)
            t = time_interleaved({"fixed": lambda: fixed(x), "dynamic": lambda: dynamic(x),
                                  "fused": lambda: fused(x)}, "cpu", repeats=repeats, min_time=0.02)
            for tag in ("dynamic", "fused"):
                rows.append({"what": f"eager eval ms ({tag})", "batch": batch, "fixed": t["fixed"] * 1e3,
                             "dynamic": t[tag] * 1e3, "ratio": t[tag] / t["fixed"]})
    return rows


def layer_rows(repeats: int) -> list[dict]:
    """Hard DynamicShuffle (as trained, and fused) / nn.ChannelShuffle at ShuffleNetV2 1.0x's ImageNet
    stage shapes, batch 64, with every permutation depending on the input."""
    from dynshuffle import DynamicShuffle, fuse_for_inference
    from dynshuffle.profiling.timing import time_interleaved

    rows = []
    for channels, size in ((116, 28), (232, 14), (464, 7)):
        torch.manual_seed(0)
        module = _randomize_generators(nn.Sequential(DynamicShuffle(channels, 2, hidden=4))).eval()
        fused = fuse_for_inference(module)
        fixed = nn.ChannelShuffle(2)
        x = torch.randn(64, channels, size, size)
        with torch.no_grad():
            t = time_interleaved({"fixed": lambda: fixed(x), "dynamic": lambda: module(x),
                                  "fused": lambda: fused(x)}, "cpu", repeats=repeats, min_time=0.02)
        for tag in ("dynamic", "fused"):
            rows.append({"width": f"C={channels} {size}x{size}", "what": f"hard module ms ({tag}) / nn.ChannelShuffle",
                         "batch": 64, "fixed": t["fixed"] * 1e3, "dynamic": t[tag] * 1e3,
                         "ratio": t[tag] / t["fixed"]})
    return rows


def compiled_rows(fixed: nn.Module, dynamic: nn.Module, repeats: int) -> list[dict]:
    from dynshuffle.profiling.timing import time_interleaved

    rows = []
    x = torch.randn(8, 3, 32, 32)
    cfix, cdyn = torch.compile(fixed, fullgraph=True), torch.compile(dynamic, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(cdyn(x), dynamic(x))
        t = time_interleaved({"fixed": lambda: cfix(x), "dynamic": lambda: cdyn(x)}, "cpu", repeats=repeats, min_time=0.02)
    rows.append({"what": "compiled eval ms", "batch": 8, "fixed": t["fixed"] * 1e3, "dynamic": t["dynamic"] * 1e3,
                 "ratio": t["dynamic"] / t["fixed"]})
    return rows


def format_rows(rows: list[dict]) -> str:
    def num(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| width | what | batch | fixed | dynamic | dynamic / fixed |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['width']} | {r['what']} | {r['batch']} | {num(r['fixed'])} | {num(r['dynamic'])} "
              f"| {r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="0.5,1.0")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--skip-layers", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = [] if args.skip_layers else layer_rows(args.repeats)
    if rows:
        print(format_rows(rows), flush=True)
    for width in (float(w) for w in args.widths.split(",") if w):
        fixed, dynamic = build_pair(width)
        parts = [] if args.skip_onnx else onnx_rows(fixed, dynamic, args.repeats, args.threads)
        parts += eager_rows(fixed, dynamic, args.repeats)
        if args.compile:
            parts += compiled_rows(fixed, dynamic, args.repeats)
        rows += [{"width": width, **r} for r in parts]
        print(format_rows(rows[-len(parts):]), flush=True)
    print(f"\n# deploy benchmark: torch {torch.__version__}, {args.threads} thread(s), medians of {args.repeats}")
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
