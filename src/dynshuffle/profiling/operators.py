"""Operators per step: how many kernel-launching operators a model dispatches per training step and per
eval forward (also of its inference form, `fuse_for_inference`), as ratios to the fixed-shuffle model.

On a GPU a small CNN's eager step is bound by kernel launches, not arithmetic: every operator costs a few
microseconds of host time whatever its size. The number of operators a step dispatches is the CPU-side,
machine-independent measure of that cost (docs/performance.md, "Operators per step").

Counted: every ATen operator that reaches the dispatcher's kernels (`TorchDispatchMode`) during the step,
except views and aliases (`Tensor.view`, `transpose`, `expand`, slicing, `_unsafe_view`, `detach`: no
kernel) and allocation-only operators (`empty`, `empty_like`, `empty_strided`, `new_empty`: an allocator
call, no kernel). A train step is: gradients set to None, forward, cross-entropy + the recorded
orthogonality penalties, backward (the optimizer is left out: it is the same few fused operators per
parameter group whatever the shuffle). The step runs twice before it is counted, so cached constant
tables are built outside it.
"""
from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dynshuffle.layers.base import named_shuffle_modules, total_orthogonality_penalty
from dynshuffle.layers.fused import fuse_for_inference
from dynshuffle.layers.modes import set_shuffle_mode
from dynshuffle.models.registry import create_model

from .formatting import format_table

__all__ = ["LAUNCH_FREE_OPERATORS", "count_operators", "OperatorRow", "operator_report", "format_operator_rows",
           "OPERATOR_VARIANTS", "OPERATOR_TARGETS"]

LAUNCH_FREE_OPERATORS = frozenset({"_unsafe_view", "detach", "alias", "lift_fresh", "empty", "empty_like",
                                   "empty_strided", "new_empty", "promote_types", "result_type"})

# variant -> model options; the first is the baseline of every ratio.
OPERATOR_VARIANTS: dict[str, dict] = {
    "static": {"shuffle": "static", "pointwise": "conv"},
    "learned": {"shuffle": "learned", "pointwise": "conv"},
    "dynamic": {"shuffle": "dynamic", "pointwise": "conv"},
    "sds": {"shuffle": "static", "pointwise": "sds"},
}
# (variant, step) -> the ratio to the fixed model that the launch-lean layers are designed to stay under.
OPERATOR_TARGETS = {("dynamic", "train ste"): 2.0, ("dynamic", "train soft"): 2.0, ("dynamic", "eval"): 1.8,
                    ("learned", "eval"): 1.1}
STEPS = ("train ste", "train soft", "eval", "eval fused")


class _OperatorCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in LAUNCH_FREE_OPERATORS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count_operators(fn: Callable[[], object], warmup: int = 2) -> collections.Counter:
    """The kernel-launching operators one call of `fn` dispatches, by name (see the module docstring);
    `fn` runs `warmup` times first."""
    for _ in range(warmup):
        fn()
    with _OperatorCounter() as counter:
        fn()
    return counter.counts


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def step():
        for p in model.parameters():
            p.grad = None
        loss = nn.functional.cross_entropy(model(x), y) + total_orthogonality_penalty(model)
        loss.backward()
    return step


def _eval_forward(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def forward():
        with torch.no_grad():
            model(x)
    return forward


@dataclass
class OperatorRow:
    """One (variant, step): its operator count, the fixed model's, and what the shuffle modules add."""

    model: str
    variant: str
    step: str
    operators: int
    fixed_operators: int
    shuffle_modules: int
    top: str  # the operators the variant adds most of, "name +count"
    target: float | None = None

    @property
    def ratio(self) -> float:
        return self.operators / self.fixed_operators

    @property
    def per_module(self) -> float | None:
        """The excess over the fixed model per shuffle module (None for a model without one)."""
        return (self.operators - self.fixed_operators) / self.shuffle_modules if self.shuffle_modules else None

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio, "per_module": self.per_module}


def operator_report(model: str = "shufflenet_v2_x0_5", stem: str = "cifar", input_size: int = 32, batch: int = 8,
                    variants: Sequence[str] = ("static", "learned", "dynamic", "sds"), num_classes: int = 10,
                    seed: int = 0) -> list[OperatorRow]:
    """Operators per train step (straight-through and soft) and per eval forward of each variant of `model`,
    against the fixed-shuffle model (`variants[0]` must be "static"). CPU, float32."""
    unknown = [v for v in variants if v not in OPERATOR_VARIANTS]
    if unknown or not variants or variants[0] != "static":
        raise ValueError(f"variants must start with 'static' and be some of {sorted(OPERATOR_VARIANTS)}, "
                         f"got {list(variants)}")
    torch.manual_seed(seed)
    x = torch.randn(batch, 3, input_size, input_size)
    y = torch.randint(0, num_classes, (batch,))
    counts: dict[tuple[str, str], collections.Counter] = {}
    modules: dict[str, int] = {}
    for variant in variants:
        net = create_model(model, stem=stem, num_classes=num_classes, **OPERATOR_VARIANTS[variant])
        modules[variant] = sum(1 for _ in named_shuffle_modules(net))
        for step in STEPS:
            if step == "eval":
                counts[variant, step] = count_operators(_eval_forward(net.eval(), x))
            elif step == "eval fused":  # the inference form (`fuse_for_inference`), what deployment runs
                fused = fuse_for_inference(net)
                counts[variant, step] = count_operators(_eval_forward(fused, x))
            else:
                set_shuffle_mode(net, "ste" if step == "train ste" else "soft")
                counts[variant, step] = count_operators(_train_step(net.train(), x, y))
                set_shuffle_mode(net, "auto")
    rows = []
    for variant in variants:
        for step in STEPS:
            if variant == "static" and step in ("train soft", "eval fused"):
                continue  # no shuffle module: the same step as "train ste" / "eval"
            extra = counts[variant, step].copy()
            baseline = counts["static", "eval" if step == "eval fused" else step]
            extra.subtract(baseline)
            top = ", ".join(f"{name} {n:+d}" for name, n in extra.most_common(6) if n > 0)
            rows.append(OperatorRow(model, variant, step, sum(counts[variant, step].values()),
                                    sum(baseline.values()), modules[variant], top,
                                    OPERATOR_TARGETS.get((variant, step))))
    return rows


def format_operator_rows(rows: Sequence[OperatorRow], markdown: bool = False) -> str:
    """The table of `operator_report`'s rows: operators, ratio to the fixed model, excess per module."""
    table = [{"model": r.model, "variant": r.variant, "step": r.step, "operators": r.operators,
              "x fixed": f"{r.ratio:.2f}x", "per module": "-" if r.per_module is None else f"{r.per_module:+.1f}",
              "target": "-" if r.target is None else f"<= {r.target:.2f}x "
                                                    + ("yes" if r.ratio <= r.target else "NO"),
              "most added": r.top or "-"} for r in rows]
    return format_table(table, markdown=markdown)
