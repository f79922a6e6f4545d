"""The inference form of the shuffle modules, as module types of their own, and `fuse_for_inference` (a
fused copy of a model).

A fused module computes only the exact permutation, with the fewest operations: a `FusedDynamicShuffle`
runs a `FusedShuffleGenerator` (BatchNorm folded, one head for A and B, the temperature folded in) and
one pair of sorts for both factors; a `FusedLearnedShuffle` holds its permutation as a constant index.
They run in eval mode only. Export (`dynshuffle.deploy.export`) traces the fused form of a copy.
"""
from __future__ import annotations

import abc
import copy

import torch
from torch import Tensor, nn

from . import functional as DF
from .base import ShuffleModule, check_input, scatter_channels
from .generator import FusedShuffleGenerator

__all__ = ["FusedShuffle", "FusedDynamicShuffle", "FusedLearnedShuffle", "fuse_for_inference"]


class FusedShuffle(nn.Module, metaclass=abc.ABCMeta):
    """Base of the fused shuffle modules: `exact_index(x)` gives the `(N|1, C)` permutation index, and the
    forward is one gather with it. Built by `ShuffleModule.fused()`; it cannot train."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.channels, self.groups = channels, groups

    @abc.abstractmethod
    def exact_index(self, x: Tensor) -> Tensor:
        """The exact permutation index `(N|1, C)` for `x`."""

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, type(self).__name__)
        if self.training:
            raise RuntimeError(f"{type(self).__name__} is for inference only (call .eval()); fuse a copy of a "
                               f"model: dynshuffle.fuse_for_inference(model) returns a fused copy and leaves the model trainable")
        return DF.permute_channels(x, self.exact_index(x))

    @torch.no_grad()
    def permutation(self, x: Tensor) -> Tensor:
        """The exact permutation applied to `x`: LongTensor `(N, C)` with `out[n, c] == x[n, perm[n, c]]`."""
        check_input(x, self.channels, type(self).__name__)
        return self.exact_index(x).expand(x.shape[0], -1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"


class FusedDynamicShuffle(FusedShuffle):
    """Inference form of a `DynamicShuffle` (`DynamicShuffle.fused()`): the fused generator writes the scores
    of A's and B's rows as one tensor, and one argmax and pair of sorts binarize both
    (`functional.ranked_columns`); two table gathers compose the index (`functional.compose_ranks`)."""

    def __init__(self, channels: int, groups: int, n1: int, n2: int, generator: FusedShuffleGenerator):
        super().__init__(channels, groups)
        self.n1, self.n2 = n1, n2
        self.generator = generator

    def exact_index(self, x: Tensor) -> Tensor:
        scores = self.generator(x)
        ranks = DF.ranked_columns(scores.argmax(-1), self.n1 + self.n2, self.n1, scores.shape[-1])
        return DF.compose_ranks(ranks, self.n1, self.n2, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        if DF.is_tracing():  # exported: the gather form (an ONNX TopK is not stable, `block_orders` needs it)
            return super().forward(x)
        check_input(x, self.channels, type(self).__name__)
        if self.training:
            return super().forward(x)  # raises the "inference only" error
        # Eager and compiled: one stable sort gives the rows' order, and the input channels are scattered to
        # their places (docs/performance.md, "Operators per step"): the same permutation in fewer operators.
        inverse, order = self.inverse_index(x)
        return scatter_channels(x, inverse, order, self.groups)

    def inverse_index(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(inverse, order)` for `x`: where each input channel goes, as flat rows of the output's
        `(N * C, H * W)` view (`DF.inverse_composed_index`), and the factors' sorted rows
        (`DF.block_orders`). A `StaticDynamicShuffle` adds its input at these rows of its mixing's output."""
        order = DF.block_orders(self.generator(x), self.n1)
        return DF.inverse_composed_index(order, self.n1, self.n2, self.groups, x.shape[0]), order

    def extra_repr(self) -> str:
        return super().extra_repr() + f", factors=({self.n1}, {self.n2})"


class FusedLearnedShuffle(FusedShuffle):
    """Inference form of a `LearnedShuffle` (`LearnedShuffle.fused()`): its permutation as a constant
    `(1, C)` index (a buffer, not saved in the state dict)."""

    def __init__(self, channels: int, groups: int, index: Tensor):
        super().__init__(channels, groups)
        self.register_buffer("index", index, persistent=False)

    def exact_index(self, x: Tensor) -> Tensor:
        return self.index


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy of `model` in its inference form: every shuffle module replaced by its fused module
    (`ShuffleModule.fused()`: `FusedDynamicShuffle`, `FusedLearnedShuffle`; BatchNorm folded, one head), in
    eval mode. `model` is not changed and keeps training. The exact permutations are those of `model`
    (BatchNorm folding aside). A shuffle module used at several places stays shared in the copy."""
    model = copy.deepcopy(model)
    if isinstance(model, ShuffleModule):
        return model.fused().eval()
    model.eval()
    fused: dict[int, nn.Module] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if isinstance(module, ShuffleModule):
            if id(module) not in fused:
                fused[id(module)] = module.fused().eval()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, fused[id(module)])
    return model
