"""The layer and model benchmarks: every figure is a ratio to a baseline measured beside it.

Absolute times on a shared or throttled machine drift; a ratio of two operations timed alternately in the
same run is what stays comparable, so each row times its candidate and its baseline interleaved and
reports the median of each (`timing`).

- Layer benchmark (`run_layer_benchmark`, `format_rows`): one shuffle module against the fixed shuffle
  or a 1x1 convolution at ShuffleNetV2's stage shapes.
- Model benchmark (`run_model_benchmark`, `format_model_rows`): each shuffle variant of a model against
  the fixed-shuffle model: eval latency, one training step, peak memory.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tqdm import tqdm

from dynshuffle.layers import functional as DF
from dynshuffle.layers.base import total_orthogonality_penalty
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.modes import set_shuffle_mode
from dynshuffle.layers.sds import StaticDynamicShuffle
from dynshuffle.models.registry import create_model

from .counting import peak_activation_bytes
from .formatting import format_bytes, format_table
from .timing import synchronize, time_interleaved, time_pair

__all__ = ["LayerRow", "layer_rows", "run_layer_benchmark", "format_rows", "MODEL_BENCH_VARIANTS",
           "ModelSetup", "run_model_benchmark", "format_model_rows"]

# ShuffleNetV2 1.0x stage shapes (channels, spatial size) at the two input resolutions of the paper.
STAGE_SHAPES = {
    "imagenet": [(116, 28), (232, 14), (464, 7)],
    "cifar": [(116, 16), (232, 8), (464, 4)],
}


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
    # A trained generator gives distinct row argmaxes (its soft matrices are near-permutations), a random one
    # collides everywhere. The binarization is branch-free, so both should cost the same: time the first
    # against the target and report the second beside it as the check.
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
    bar = progress and sys.stdout.isatty() and sys.stderr.isatty()  # a bar on a terminal, else plain lines
    rows: list[LayerRow] = []
    torch.manual_seed(0)
    for i, (stem, c, s, b) in enumerate(tqdm(jobs, desc="layer benchmark", disable=not bar)):
        if progress and not bar:
            print(f"layer benchmark {i + 1}/{len(jobs)}: {stem} C={c} {s}x{s}, batch {b}", file=sys.stderr, flush=True)
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


# ------------------------------------------------------------------------------------ model benchmark

MODEL_BENCH_VARIANTS: dict[str, dict] = {
    "static": {"shuffle": "static", "pointwise": "conv"},
    "learned": {"shuffle": "learned", "pointwise": "conv"},
    "dynamic": {"shuffle": "dynamic", "pointwise": "conv"},
    "sds": {"shuffle": "static", "pointwise": "sds"},
    "dynamic+sds": {"shuffle": "dynamic", "pointwise": "sds"},
}


@dataclass(frozen=True)
class ModelSetup:
    """One model of the benchmark: registry name, stem, input side, classes."""

    name: str
    stem: str
    input_size: int
    num_classes: int


DEFAULT_MODEL_SETUPS = (
    ModelSetup("shufflenet_v2_x0_5", "cifar", 32, 10),
    ModelSetup("shufflenet_v2_x1_0", "cifar", 32, 10),
    ModelSetup("shufflenet_v2_x1_0", "imagenet", 224, 1000),
)
QUICK_MODEL_SETUPS = (ModelSetup("shufflenet_v2_x0_5", "cifar", 32, 10),)


def _eval_step(model: nn.Module, x: torch.Tensor):
    def step():
        with torch.no_grad():
            model(x)
    return step


def _train_step(model: nn.Module, x: torch.Tensor, y: Tensor, reg_weight: float, params=None):
    opt = torch.optim.SGD(params if params is not None else model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y) + reg_weight * total_orthogonality_penalty(model)
        loss.backward()
        opt.step()
    return step


def _train_peak_bytes(model: nn.Module, setup: ModelSetup, batch: int, device: torch.device, reg_weight: float) -> int:
    """CUDA: the allocator's peak over one training step (beyond what was allocated before it);
    CPU: the activations saved for backward (`peak_activation_bytes`)."""
    if device.type != "cuda":
        return peak_activation_bytes(model, setup.input_size, batch, device)
    x = torch.randn(batch, 3, setup.input_size, setup.input_size, device=device)
    y = torch.randint(0, setup.num_classes, (batch,), device=device)
    step = _train_step(model, x, y, reg_weight)
    step()  # optimizer state allocated outside the measured step
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def run_model_benchmark(setups: Sequence[ModelSetup] | None = None,
                        variants: Sequence[str] = ("static", "learned", "dynamic", "sds"),
                        device: str | torch.device = "cpu", eval_batches: Sequence[int] | None = None,
                        train_batch: int | None = None, warmup: int | None = None, repeats: int | None = None,
                        reg_weight: float = 1.0, seed: int = 0, *, quick: bool = False, compile: bool = False,
                        progress: bool = False) -> list[dict]:
    """Latency and memory of each shuffle variant of each model, as ratios to the first variant.

    Per setup (default: ShuffleNetV2 0.5x and 1.0x, CIFAR stem, 32x32; 1.0x, ImageNet stem, 224x224) and
    variant (static / learned / dynamic / sds): eval latency at each of `eval_batches` (default 1 and
    64; eval mode, no_grad), one training step at `train_batch` (64: forward, cross-entropy +
    `reg_weight` x orthogonality loss, backward, SGD step) and its peak memory; medians of `repeats`
    (10) after `warmup` (3), variants interleaved. `quick`: 0.5x only, batches 1 and 8, 1 warm-up,
    2 repeats (explicit arguments override). `compile`: time `torch.compile`d models.
    Returns one dict per (setup, variant): seconds (`eval_b{B}_s`, `train_b{B}_s`), `peak_bytes`, and
    the same keys with `_ratio` (to the first variant of the setup).
    """
    device = torch.device(device)
    if setups is None:
        setups = QUICK_MODEL_SETUPS if quick else DEFAULT_MODEL_SETUPS
    eval_batches = tuple(eval_batches or ((1, 8) if quick else (1, 64)))
    train_batch = train_batch or (8 if quick else 64)
    warmup = (1 if quick else 3) if warmup is None else warmup
    repeats = (2 if quick else 10) if repeats is None else repeats
    unknown = [v for v in variants if v not in MODEL_BENCH_VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown variants {unknown or list(variants)}; expected some of {sorted(MODEL_BENCH_VARIANTS)}")
    rows: list[dict] = []
    for setup in setups:
        if progress:
            print(f"model benchmark: {setup.name} {setup.stem} {setup.input_size}px ...", file=sys.stderr, flush=True)
        torch.manual_seed(seed)
        models = {v: create_model(setup.name, stem=setup.stem, num_classes=setup.num_classes,
                                  **MODEL_BENCH_VARIANTS[v]).to(device) for v in variants}
        runners = {v: torch.compile(m) if compile else m for v, m in models.items()}
        result: dict[str, dict] = {v: {} for v in variants}
        side = setup.input_size
        for batch in eval_batches:
            x = torch.randn(batch, 3, side, side, device=device)
            for m in models.values():
                m.eval()
            medians = time_interleaved({v: _eval_step(r, x) for v, r in runners.items()}, device,
                                       warmup=warmup, repeats=repeats)
            for v, t in medians.items():
                result[v][f"eval_b{batch}_s"] = t
        x = torch.randn(train_batch, 3, side, side, device=device)
        y = torch.randint(0, setup.num_classes, (train_batch,), device=device)
        for m in models.values():
            m.train()
        steps = {v: _train_step(runners[v], x, y, reg_weight, models[v].parameters()) for v in variants}
        for v, t in time_interleaved(steps, device, warmup=warmup, repeats=repeats).items():
            result[v][f"train_b{train_batch}_s"] = t
        for v, m in models.items():
            result[v]["peak_bytes"] = _train_peak_bytes(m, setup, train_batch, device, reg_weight)
        base = result[variants[0]]
        for v in variants:
            row = {"model": setup.name, "stem": setup.stem, "input_size": setup.input_size, "variant": v,
                   "device": str(device), "compiled": compile, **result[v]}
            for key, value in result[v].items():
                stem_key = key[:-2] if key.endswith("_s") else key[: -len("_bytes")]
                row[f"{stem_key}_ratio"] = value / base[key] if base[key] else None
            rows.append(row)
        del models, runners
    return rows


def format_model_rows(rows: Sequence[dict], markdown: bool = False) -> str:
    """The table of `run_model_benchmark`'s rows: milliseconds, peak memory and ratios."""
    table = []
    for r in rows:
        line = {"model": r["model"], "stem": r["stem"], "variant": r["variant"]}
        for key in [k for k in r if k.startswith(("eval_b", "train_b")) and k.endswith("_s")]:
            what, batch = key[:-2].split("_b")
            line[f"{what}@{batch} ms"] = f"{1e3 * r[key]:.2f}"
            line[f"x {what}@{batch}"] = f"{r[key[:-2] + '_ratio']:.2f}x"
        line["peak mem"] = format_bytes(r["peak_bytes"])
        line["x mem"] = f"{r['peak_ratio']:.2f}x"
        table.append(line)
    return format_table(table, markdown=markdown)
