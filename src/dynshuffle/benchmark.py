"""Timing helpers and the layer benchmark: every figure is a ratio to a baseline measured beside it.

Absolute times on a shared or throttled machine drift; a ratio of two operations timed alternately in the
same run is what stays comparable, so each row times its candidate and its baseline interleaved and
reports the median of each.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from . import functional as DF
from .layers import DynamicShuffle, StaticDynamicShuffle, set_shuffle_mode
from .profiling import format_model_rows, run_model_benchmark  # noqa: F401  (the model half of `dynshuffle bench`)

# ShuffleNetV2 1.0x stage shapes (channels, spatial size) at the two input resolutions of the paper.
STAGE_SHAPES = {
    "imagenet": [(116, 28), (232, 14), (464, 7)],
    "cifar": [(116, 16), (232, 8), (464, 4)],
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(candidate: Callable[[], object], baseline: Callable[[], object], device: torch.device,
              repeats: int = 15, min_time: float = 0.02) -> tuple[float, float]:
    """Median seconds per call of `candidate` and `baseline`, timed alternately after a warm-up."""
    for fn in (candidate, baseline, candidate, baseline):
        fn()
    _sync(device)
    # Calls per measurement so that one measurement lasts about `min_time` (timer resolution, noise).
    start = time.perf_counter()
    baseline()
    _sync(device)
    per_call = max(time.perf_counter() - start, 1e-6)
    inner = max(1, int(min_time / per_call))
    samples: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(repeats):
        for slot, fn in ((0, candidate), (1, baseline)):
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            samples[slot].append((time.perf_counter() - start) / inner)
    return statistics.median(samples[0]), statistics.median(samples[1])


@dataclass
class LayerRow:
    what: str
    shape: str
    batch: int
    candidate_ms: float
    baseline: str
    baseline_ms: float
    target: float | None

    @property
    def ratio(self) -> float:
        return self.candidate_ms / self.baseline_ms

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def _forward_backward(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step():
        for p in module.parameters():
            p.grad = None
        x.grad = None
        module(x).backward(grad)
    return step


def _eval(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return module(x)
    return run


def layer_rows(channels: int, size: int, batch: int, device: torch.device, repeats: int,
               dtype: torch.dtype = torch.float32, compile: bool = False) -> list[LayerRow]:
    """All comparisons for one stage shape and batch size."""
    shape = f"C={channels} {size}x{size}"
    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
    x_grad = x.clone().requires_grad_(True)
    grad = torch.randn_like(x)
    shuffle = nn.ChannelShuffle(2).to(device)
    conv = nn.Conv2d(channels, channels, 1, bias=False).to(device, dtype)
    dynamic = DynamicShuffle(channels, 2).to(device, dtype)
    sds = StaticDynamicShuffle(channels, 2).to(device, dtype)
    # The hard path's cost depends only on whether the row argmaxes collide: a trained generator gives
    # distinct argmaxes (its soft matrices are near-permutations), a random one collides everywhere and
    # pays for the greedy repair. Time the first against the target and report the second beside it.
    colliding = DynamicShuffle(channels, 2).to(device, dtype)
    with torch.no_grad():
        for m in (dynamic, sds.dynamic):
            for p in m.generator.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        for p in colliding.generator.parameters():
            p.normal_(0, 0.5)
    colliding.eval()
    maybe_compile = (lambda m: torch.compile(m)) if compile else (lambda m: m)
    index = DF.compose_permutation(torch.stack([torch.randperm(dynamic.n1) for _ in range(batch)]),
                                   torch.stack([torch.randperm(dynamic.n2) for _ in range(batch)]), 2).to(device)

    rows = []

    def add(what, candidate, baseline_name, baseline, target):
        c, b = time_pair(candidate, baseline, device, repeats)
        rows.append(LayerRow(what, shape, batch, c * 1e3, baseline_name, b * 1e3, target))

    dynamic.eval(), sds.eval(), conv.eval()
    add("hard DynamicShuffle (generator incl.)", _eval(maybe_compile(dynamic), x), "nn.ChannelShuffle",
        _eval(shuffle, x), 2.0)
    add("hard DynamicShuffle, random generator (all collide)", _eval(maybe_compile(colliding), x),
        "nn.ChannelShuffle", _eval(shuffle, x), None)
    add("gather alone", lambda: DF.permute_channels(x, index), "nn.ChannelShuffle", _eval(shuffle, x), 1.2)
    add("StaticDynamicShuffle eval", _eval(maybe_compile(sds), x), "1x1 conv eval", _eval(conv, x), 0.5)

    dynamic.train(), sds.train(), conv.train()
    conv_step = _forward_backward(conv, x_grad, grad)
    set_shuffle_mode(dynamic, "ste")
    add("straight-through fwd+bwd", _forward_backward(dynamic, x_grad, grad), "1x1 conv fwd+bwd", conv_step, 0.3)
    set_shuffle_mode(dynamic, "soft")
    add("soft fwd+bwd", _forward_backward(dynamic, x_grad, grad), "1x1 conv fwd+bwd", conv_step, 1.0)
    add("StaticDynamicShuffle fwd+bwd (soft)", _forward_backward(sds, x_grad, grad), "1x1 conv fwd+bwd",
        conv_step, 0.5)
    return rows


def run_layer_benchmark(device: str = "cpu", stems=("imagenet", "cifar"), batches=(1, 64), repeats: int = 15,
                        compile: bool = False, quick: bool = False, progress: bool = True) -> list[LayerRow]:
    dev = torch.device(device)
    shapes = [(stem, c, s) for stem in stems for c, s in STAGE_SHAPES[stem]]
    if quick:
        shapes, batches, repeats = shapes[:1], batches[:1], 3
    jobs = [(stem, c, s, b) for stem, c, s in shapes for b in batches]
    try:
        from tqdm import tqdm
        jobs_iter = tqdm(jobs, desc="layer benchmark", disable=not progress)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        jobs_iter = jobs
    rows: list[LayerRow] = []
    torch.manual_seed(0)
    for stem, c, s, b in jobs_iter:
        rows.extend(layer_rows(c, s, b, dev, repeats, compile=compile))
    return rows


def format_rows(rows: list[LayerRow]) -> str:
    lines = ["| operation | shape | batch | ms | baseline | baseline ms | ratio | target | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "" if r.target is None else ("yes" if r.ratio <= r.target else "NO")
        target = "" if r.target is None else f"≤ {r.target:g}"
        lines.append(f"| {r.what} | {r.shape} | {r.batch} | {r.candidate_ms:.3f} | {r.baseline} | "
                     f"{r.baseline_ms:.3f} | {r.ratio:.2f} | {target} | {met} |")
    return "\n".join(lines)
