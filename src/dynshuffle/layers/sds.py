"""`StaticDynamicShuffle` (SDS): a dynamic shuffle plus a learned mixing, in place of a pointwise convolution.

The paper's name: "static" there is the learned, input-independent part (`mixing_u`, `mixing_v` here),
"dynamic" the generated permutation. The package's "static" shuffle (`shuffle="static"`) is something
else, ShuffleNet's fixed `ChannelShuffle`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import functional as DF
from .base import ShuffleModule, check_input
from .dynamic import DynamicShuffle
from .fused import FusedDynamicShuffle

__all__ = ["StaticDynamicShuffle", "MIXING_IMPLS", "named_shuffle_layers"]

MIXING_IMPLS = ("auto", "factored", "dense")


class StaticDynamicShuffle(nn.Module):
    """Static-dynamic shuffle: a light replacement for a C -> C pointwise convolution (docs/design.md §7).

    `y = S_G · blockdiag_g[(A(x) ⊗ B(x)) + (U_g ⊗ V_g)] x (+ bias)`: the dynamic permutation of a
    `DynamicShuffle` (`self.dynamic`, a shuffle module) plus a learned Kronecker-factored mixing per group
    (`mixing_u` = U, `mixing_v` = V). Costs C·(n1 + n2) multiply-adds per pixel for the mixing (the dynamic
    part is a gather at inference) against C² for the convolution, and G·(n1² + n2²) mixing parameters
    against C².

    `mixing_impl`: how the mixing runs: "factored" (two small matrix products; in soft training they are
    shared with the dynamic part) or "dense" (one grouped 1x1 convolution with the Kronecker block
    materialised). "auto" is "factored": it costs fewer multiply-adds, and grouped 1x1 convolutions
    measured slower than dense ones on CPU (docs/method.md §5, benchmarks/bench_kron_variants.py).
    The other arguments are those of `DynamicShuffle`.
    """

    def __init__(self, channels: int, groups: int = 2, factors: tuple[int, int] | None = None,
                 hidden: int | None = None, temperature: float = 1.0, share: bool = True,
                 mode: str = "auto", bias: bool = False, mixing_impl: str = "auto",
                 initial_confidence: float = 0.05, **dynamic_options):
        super().__init__()
        # `dynamic_options`: the keyword-only options of DynamicShuffle (relaxation, noise, stats, ...).
        self.dynamic = DynamicShuffle(channels, groups, factors, hidden, temperature, share, mode,
                                      initial_confidence, **dynamic_options)
        self.channels, self.groups = channels, groups
        n1, n2 = self.dynamic.n1, self.dynamic.n2
        if mixing_impl not in MIXING_IMPLS:
            raise ValueError(f"mixing_impl must be one of {MIXING_IMPLS}, got {mixing_impl!r}")
        self.mixing_impl = "factored" if mixing_impl == "auto" else mixing_impl
        # Each entry of U ⊗ V has variance 1 / n, a fan-in initialisation of the dense block.
        self.mixing_u = nn.Parameter(torch.randn(groups, n1, n1) / math.sqrt(n1))
        self.mixing_v = nn.Parameter(torch.randn(groups, n2, n2) / math.sqrt(n2))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def mixing_weight(self) -> Tensor:
        """The mixing as a grouped 1x1 convolution weight `(C, n, 1, 1)` (within-group order)."""
        block = torch.einsum("gik,gjl->gijkl", self.mixing_u, self.mixing_v)
        n = self.channels // self.groups
        return block.reshape(self.channels, n, 1, 1)

    def _mixing(self, x: Tensor) -> Tensor:
        if self.mixing_impl == "dense":
            y = F.conv2d(x, self.mixing_weight().to(x.dtype), groups=self.groups)
            return DF.channel_shuffle(y, self.groups) if self.groups > 1 else y
        return DF.kron_shuffle(x, self.mixing_u.unsqueeze(0), self.mixing_v.unsqueeze(0), self.groups)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, type(self).__name__)
        dyn = self.dynamic
        # After fuse_for_inference the dynamic part is a FusedDynamicShuffle: the exact path only.
        if isinstance(dyn, ShuffleModule) and dyn.uses_soft_path() and self.mixing_impl == "factored":
            # The soft dynamic part and the mixing share their two matrix products.
            a, b, penalty = dyn.soft_factors_and_penalty(x)
            dyn.record_penalties(a, b, penalty)
            y = DF.kron_apply_sum(x, a, b, self.mixing_u.unsqueeze(0), self.mixing_v.unsqueeze(0), self.groups)
        else:
            y = self._mixing(x)
            fused = dyn.inference_form() if isinstance(dyn, ShuffleModule) else dyn
            if isinstance(fused, FusedDynamicShuffle) and not fused.training and y.is_contiguous() and \
                    x.is_contiguous() and not (torch.is_grad_enabled() and x.requires_grad) and not DF.is_tracing():
                # Inference: the permuted input is added in place at its rows of the mixing's output, without
                # a permuted copy of the input and a second pass for the sum (exact: each row gets one row).
                n, c, h, w = x.shape
                y.view(n * c, h * w).index_add_(0, fused.inverse_index(x)[0], x.view(n * c, h * w))
                if isinstance(dyn, ShuffleModule):  # as its own eval forward leaves it
                    dyn.clear_penalties()
            else:
                y = y + dyn(x)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1).to(y.dtype)
        return y

    def permutation(self, x: Tensor) -> Tensor:
        return self.dynamic.permutation(x)

    def extra_repr(self) -> str:
        n1, n2 = self.dynamic.n1, self.dynamic.n2
        return (f"channels={self.channels}, groups={self.groups}, mixing=({n1}x{n1}) ⊗ ({n2}x{n2}) per group, "
                f"mixing_impl={self.mixing_impl!r}, bias={self.bias is not None}")


def named_shuffle_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """`(name, module)` of the outermost modules that a shuffle choice adds to a network: every shuffle module,
    or the StaticDynamicShuffle built around one. Their tensors are what a fixed-shuffle checkpoint lacks
    (`checkpoints.load_compatible_state_dict`), their forward is what the shuffle costs
    (`profiling.counting`), and their initialisation is their own (`models.blocks.init_weights`)."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, (ShuffleModule, StaticDynamicShuffle)):
            if not any(name.startswith(outer + ".") or outer == "" for outer, _ in found):
                found.append((name, module))
    return found
