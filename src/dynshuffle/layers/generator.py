"""The generator of a `DynamicShuffle`: pooled channel statistics -> the logits of A and B, and its fused
inference form.

Shaped like squeeze-and-excitation (docs/design.md §2): a linear layer to width `hidden`, BatchNorm, an
activation, then one head writing the logits of both factors; `default_hidden` sizes the width.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .functional import is_tracing

__all__ = ["ShuffleGenerator", "FusedShuffleGenerator", "default_hidden", "pooled_stats", "spatial_mean",
           "MIN_HIDDEN", "GENERATOR_STATS", "GENERATOR_ACTIVATIONS"]


MIN_HIDDEN = 16  # the smallest width that separated every routing target (docs/method.md §7.2)


def default_hidden(channels: int, n1: int, n2: int) -> int:
    """Generator width: about 5 % of a C x C pointwise convolution's parameters, at least `MIN_HIDDEN`.

    The floor is measured: narrower generators failed to separate some targets of the routing benchmark
    (docs/method.md §7.2). ShuffleNets pass their own, smaller width (`models.blocks.SHUFFLENET_HIDDEN`).

    The heads cost `d * (n1² + n2²)` parameters; ShuffleNetV2's widths carry a prime factor (29 at 1.0x,
    61 at 2.0x), so n2 can be large and `d = C / 4` (squeeze-excitation's usual width) would add about
    half of the network's parameters (docs/design.md §6). See docs/method.md for the budget table.
    """
    budget = channels * channels // (20 * (channels + n1 * n1 + n2 * n2))
    return max(MIN_HIDDEN, min(channels // 4, budget))


class _SpatialMean(torch.autograd.Function):
    """Mean over H, W whose backward returns a broadcast view instead of a materialised tensor.

    Autograd's own mean backward writes a full-size gradient (a division) that is then added to the
    gradient of the shuffle's other use of `x`: two extra passes over the largest tensor of the layer.
    A stride-0 view costs nothing and is added once, where the gradients meet.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.spatial = (x.shape[2], x.shape[3])
        return x.mean((2, 3))

    @staticmethod
    def backward(ctx, grad):
        h, w = ctx.spatial
        return (grad / (h * w))[:, :, None, None].expand(-1, -1, h, w)


def spatial_mean(x: Tensor) -> Tensor:
    """`x.mean((2, 3))`, with a backward that broadcasts instead of materialising (see `_SpatialMean`)."""
    # The custom backward only matters when a gradient flows; inference (and the fused form, bound by
    # per-call overhead at batch 1) takes the plain op.
    if not (x.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling() or is_tracing():
        return x.mean((2, 3))
    return _SpatialMean.apply(x)


GENERATOR_STATS = ("mean", "mean_std")


def pooled_stats(x: Tensor, stats: str) -> Tensor:
    """The generator's input: per-channel spatial means ("mean") or means and standard deviations."""
    if stats == "mean":
        return spatial_mean(x)
    return torch.cat([x.mean((2, 3)), x.float().std((2, 3), unbiased=False).to(x.dtype)], dim=1)


GENERATOR_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "leaky_relu": F.leaky_relu, "none": lambda z: z}


class ShuffleGenerator(nn.Module):
    """Squeeze-excitation shaped generator: pooled channels -> hidden -> logits of A and B.

    The heads start with a diagonal bias (`diagonal_logit(n)` on the diagonal, 0 elsewhere) and zero or
    small weights, so a fresh module binarizes to A = I and B = I for every input: it starts as the fixed
    shuffle.
    """

    def __init__(self, channels: int, hidden: int, n1: int, n2: int, heads: int, diagonal_logit,
                 stats: str = "mean", head_init: float = 0.0, activation: str = "relu"):
        super().__init__()
        if stats not in GENERATOR_STATS:
            raise ValueError(f"stats must be one of {GENERATOR_STATS}, got {stats!r}")
        if activation not in GENERATOR_ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(GENERATOR_ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        if not head_init >= 0:
            raise ValueError(f"head_init must be >= 0, got {head_init!r}")
        self.n1, self.n2, self.heads, self.stats = n1, n2, heads, stats
        self.reduce = nn.Linear(channels * (2 if stats == "mean_std" else 1), hidden, bias=False)
        self.norm = nn.BatchNorm1d(hidden)
        # One head writes both factors' logits (A's heads x n1 x n1, then B's heads x n2 x n2): one GEMM
        # forward and two backward, where a head per factor would run two and four.
        self.head = nn.Linear(hidden, heads * (n1 * n1 + n2 * n2))
        nn.init.kaiming_normal_(self.reduce.weight, nonlinearity="relu")
        nn.init.normal_(self.head.weight, std=head_init) if head_init else nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.cat([torch.eye(k).mul(diagonal_logit(k)).repeat(heads, 1, 1).reshape(-1)
                                            for k in (n1, n2)]))

    def forward(self, x: Tensor) -> Tensor:
        """Flat logits `(N, heads * (n1² + n2²))`: A's, then B's (`ShuffleModule.flat_logits`)."""
        z = self.reduce(pooled_stats(x, self.stats))
        if self.training and z.shape[0] == 1:
            # Batch statistics of a single sample are undefined: normalise with the running ones.
            z = F.batch_norm(z, self.norm.running_mean, self.norm.running_var, self.norm.weight,
                             self.norm.bias, training=False, eps=self.norm.eps)
        else:
            z = self.norm(z)
        return self.head(GENERATOR_ACTIVATIONS[self.activation](z))

    @torch.no_grad()
    def fused(self, temperature: float) -> FusedShuffleGenerator:
        """The inference form (see `FusedShuffleGenerator`), with the running BatchNorm statistics folded in
        and the logits divided by `temperature`."""
        scale = self.norm.weight / torch.sqrt(self.norm.running_var + self.norm.eps)
        reduce = nn.Linear(self.reduce.in_features, self.reduce.out_features).to(self.reduce.weight)
        reduce.weight.copy_(self.reduce.weight * scale[:, None])
        reduce.bias.copy_(self.norm.bias - self.norm.running_mean * scale)
        n1, n2, heads, k = self.n1, self.n2, self.heads, self.n1 + self.n2
        width = max(n1, n2)
        split, hidden = heads * n1 * n1, self.head.in_features
        weight = self.head.weight.new_zeros(heads, k, width, hidden)
        bias = self.head.bias.new_full((heads, k, width), -1e9)
        weight[:, :n1, :n1] = self.head.weight[:split].view(heads, n1, n1, -1) / temperature
        weight[:, n1:, :n2] = self.head.weight[split:].view(heads, n2, n2, -1) / temperature
        bias[:, :n1, :n1] = self.head.bias[:split].view(heads, n1, n1) / temperature
        bias[:, n1:, :n2] = self.head.bias[split:].view(heads, n2, n2) / temperature
        head = nn.Linear(hidden, heads * k * width).to(self.head.weight)
        head.weight.copy_(weight.view(heads * k * width, -1))
        head.bias.copy_(bias.view(-1))
        return FusedShuffleGenerator(reduce, head, n1, n2, heads, self.stats, self.activation).eval()

    def extra_repr(self) -> str:
        return f"stats={self.stats!r}, activation={self.activation!r}"


class FusedShuffleGenerator(nn.Module):
    """Inference form of a `ShuffleGenerator`: BatchNorm folded into the first linear layer, the two heads
    merged into one that writes the scores of A's n1 rows, then B's n2 rows, each row's own columns from 0
    (column `j` of a B row is B's column `j`, so a row of NaN scores, whose argmax is column 0, still names
    a column of its own factor), and the temperature folded into the head. One pooling, two GEMMs and the
    activation per module; built by `ShuffleGenerator.fused` for a `FusedDynamicShuffle`. Returns `(N, k, width)` scores for one head,
    `(N, heads, k, width)` for several (k = n1 + n2, width = max(n1, n2)): the shorter factor's rows are padded
    with -1e9 columns, which no row's argmax picks."""

    def __init__(self, reduce: nn.Linear, head: nn.Linear, n1: int, n2: int, heads: int, stats: str,
                 activation: str):
        super().__init__()
        self.reduce, self.head = reduce, head
        self.n1, self.n2, self.heads, self.stats, self.activation = n1, n2, heads, stats, activation
        self.width = head.out_features // (heads * (n1 + n2))

    def forward(self, x: Tensor) -> Tensor:
        # F.linear, not the Linear modules' calls: at batch 1 this path is bound by per-call overhead
        # (docs/performance.md).
        pooled = pooled_stats(x, self.stats)
        h = GENERATOR_ACTIVATIONS[self.activation](F.linear(pooled, self.reduce.weight, self.reduce.bias))
        k, width = self.n1 + self.n2, self.width
        scores = F.linear(h, self.head.weight, self.head.bias)
        return scores.view(-1, k, width) if self.heads == 1 else scores.view(-1, self.heads, k, width)

    def extra_repr(self) -> str:
        return (f"factors=({self.n1}, {self.n2}), heads={self.heads}, width={self.width}, stats={self.stats!r}, "
                f"activation={self.activation!r}")

