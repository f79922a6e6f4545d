"""Channel-shuffle layers: fixed, learned, dynamic (data-dependent) and static-dynamic.

`DynamicShuffle` generates, for every input, a permutation of its channels from two small soft matrices
A (n1 x n1) and B (n2 x n2) per group, applied as the Kronecker product A ⊗ B inside each of the G
groups and followed by ShuffleNet's cross-group shuffle. Training goes through the matrix path (soft, or
straight-through: exact permutation forward, softmax gradients); inference is one gather per sample.
The layers know nothing of training: the training loop reads `module.regularization` (through
`orthogonality_loss`) and switches modes with `set_shuffle_mode`.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import functional as DF

__all__ = [
    "ChannelShuffle",
    "DynamicShuffle",
    "LearnedShuffle",
    "StaticDynamicShuffle",
    "ShuffleGenerator",
    "orthogonality_loss",
    "set_shuffle_mode",
    "shuffle_modules",
    "fuse_for_inference",
    "FusedShuffleGenerator",
    "default_hidden",
    "SHUFFLE_MODES",
]

SHUFFLE_MODES = ("auto", "soft", "ste", "hard")


def _check_input(x: Tensor, channels: int, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D input (N, C, H, W), got {x.dim()}-D shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} was built for {channels} channels, but the input has {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")


class ChannelShuffle(nn.Module):
    """ShuffleNet's fixed channel shuffle: `groups` interleaved (a transpose of the group axis)."""

    def __init__(self, groups: int):
        super().__init__()
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"ChannelShuffle expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] % self.groups:
            raise ValueError(f"ChannelShuffle: {x.shape[1]} channels are not divisible by groups ({self.groups})")
        if self.groups == 1:
            return x
        return DF.channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def default_hidden(channels: int, n1: int, n2: int) -> int:
    """Generator width: about 5 % of a C x C pointwise convolution's parameters, at least 16 units.

    The floor of 16 is measured: with 8 ReLU units the generator of the routing benchmark failed to
    separate one of its 8 targets in 2 of 9 runs (exact recovery 0.88 and 0.75), with 16 it separated all
    (docs/method.md §7). ShuffleNets pass their own, smaller width (`models._blocks.SHUFFLENET_HIDDEN`).

    The heads cost `d * (n1² + n2²)` parameters; ShuffleNetV2's widths carry a prime factor (29 at 1.0x,
    61 at 2.0x), so n2 can be large and `d = C / 4` (squeeze-excitation's usual width) would add about
    half of the network's parameters (docs/design.md §6). See docs/method.md for the budget table.
    """
    budget = channels * channels // (20 * (channels + n1 * n1 + n2 * n2))
    return max(MIN_HIDDEN, min(channels // 4, budget))


MIN_HIDDEN = 16


def _diagonal_logit(n: int, confidence: float) -> float:
    """Logit on the diagonal (others 0) that puts `1/n + confidence * (1 - 1/n)` on the diagonal of a row's
    softmax: `confidence` goes from uniform rows (0) to one-hot rows (1), and the diagonal stays each row's
    largest entry for every n (a probability of `confidence` itself would put the argmax off the diagonal
    for n = 2 and confidence < 0.5, and the fresh module would no longer be the fixed shuffle)."""
    if n == 1:
        return 0.0
    p = 1.0 / n + confidence * (1.0 - 1.0 / n)
    return math.log(p * (n - 1) / (1.0 - p))


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
    # The custom backward only matters when a gradient flows; inference (and the fused form, bound by
    # per-call overhead at batch 1) takes the plain op.
    if not (x.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling() or DF.is_tracing():
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
        self.head_a = nn.Linear(hidden, heads * n1 * n1)
        self.head_b = nn.Linear(hidden, heads * n2 * n2)
        nn.init.kaiming_normal_(self.reduce.weight, nonlinearity="relu")
        for head, k in ((self.head_a, n1), (self.head_b, n2)):
            nn.init.normal_(head.weight, std=head_init) if head_init else nn.init.zeros_(head.weight)
            with torch.no_grad():
                head.bias.copy_(torch.eye(k).mul(diagonal_logit(k)).repeat(heads, 1, 1).reshape(-1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.reduce(pooled_stats(x, self.stats))
        if self.training and z.shape[0] == 1:
            # Batch statistics of a single sample are undefined: normalise with the running ones.
            z = F.batch_norm(z, self.norm.running_mean, self.norm.running_var, self.norm.weight,
                             self.norm.bias, training=False, eps=self.norm.eps)
        else:
            z = self.norm(z)
        h = GENERATOR_ACTIVATIONS[self.activation](z)
        # -1 rather than the batch size: an exported graph then needs no Shape/Gather/Concat per reshape.
        return (self.head_a(h).view(-1, self.heads, self.n1, self.n1),
                self.head_b(h).view(-1, self.heads, self.n2, self.n2))

    @torch.no_grad()
    def fused(self, temperature: float) -> FusedShuffleGenerator:
        """The inference form (see `FusedShuffleGenerator`), with the running BatchNorm statistics folded in
        and the logits divided by `temperature`."""
        scale = self.norm.weight / torch.sqrt(self.norm.running_var + self.norm.eps)
        reduce = nn.Linear(self.reduce.in_features, self.reduce.out_features).to(self.reduce.weight)
        reduce.weight.copy_(self.reduce.weight * scale[:, None])
        reduce.bias.copy_(self.norm.bias - self.norm.running_mean * scale)
        n1, n2, heads, k = self.n1, self.n2, self.heads, self.n1 + self.n2
        weight = self.head_a.weight.new_zeros(heads, k, k, self.head_a.in_features)
        bias = self.head_a.bias.new_full((heads, k, k), -1e9)
        weight[:, :n1, :n1] = self.head_a.weight.view(heads, n1, n1, -1) / temperature
        weight[:, n1:, n1:] = self.head_b.weight.view(heads, n2, n2, -1) / temperature
        bias[:, :n1, :n1] = self.head_a.bias.view(heads, n1, n1) / temperature
        bias[:, n1:, n1:] = self.head_b.bias.view(heads, n2, n2) / temperature
        head = nn.Linear(self.head_a.in_features, heads * k * k).to(self.head_a.weight)
        head.weight.copy_(weight.view(heads * k * k, -1))
        head.bias.copy_(bias.view(-1))
        return FusedShuffleGenerator(reduce, head, n1, n2, heads, self.stats, self.activation).eval()

    def extra_repr(self) -> str:
        return f"stats={self.stats!r}, activation={self.activation!r}"


class FusedShuffleGenerator(nn.Module):
    """Inference form of a `ShuffleGenerator`: BatchNorm folded into the first linear layer, the two heads
    merged into one that writes a block-diagonal `(n1 + n2) x (n1 + n2)` score matrix per head (A's block,
    then B's; the off-block scores are -1e9, so no row ever picks a column of the other factor), and the
    temperature folded into the head. One pooling, two GEMMs and a ReLU per module; built by
    `ShuffleGenerator.fused`, it cannot train. Returns `(N, k, k)` scores for one head, `(N, heads, k, k)`
    for several (k = n1 + n2)."""

    def __init__(self, reduce: nn.Linear, head: nn.Linear, n1: int, n2: int, heads: int, stats: str,
                 activation: str):
        super().__init__()
        self.reduce, self.head = reduce, head
        self.n1, self.n2, self.heads, self.stats, self.activation = n1, n2, heads, stats, activation

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            raise RuntimeError("a fused shuffle generator is for inference only (call .eval()); fuse a copy "
                               "of the model, e.g. dynshuffle.fuse_for_inference(copy.deepcopy(model))")
        # F.linear, not the Linear modules' calls: at batch 1 this path is bound by per-call overhead
        # (docs/performance.md).
        pooled = pooled_stats(x, self.stats)
        h = GENERATOR_ACTIVATIONS[self.activation](F.linear(pooled, self.reduce.weight, self.reduce.bias))
        k = self.n1 + self.n2
        scores = F.linear(h, self.head.weight, self.head.bias)
        return scores.view(-1, k, k) if self.heads == 1 else scores.view(-1, self.heads, k, k)

    def extra_repr(self) -> str:
        return f"factors=({self.n1}, {self.n2}), heads={self.heads}, stats={self.stats!r}, activation={self.activation!r}"


class _StraightThroughShuffle(torch.autograd.Function):
    """Exact permutation forward (a gather), softmax-matrix gradients backward.

    Forward: `y = x[:, index]`. Backward, as if `y` had been computed by the matrix path with the one-hot
    matrices: `dx` is the inverse gather of `dy`, and the matrix gradients reduce to Gram products of
    `dy` with the saved output, `dA[i, k] = Σ dY[i, ·] Y[a⁻¹(k), ·]` (likewise B), so no matrix is built.
    """

    @staticmethod
    def forward(ctx, x, a_soft, b_soft, index, perm_a, perm_b, groups):
        y = DF.permute_channels(x, index)
        ctx.save_for_backward(y, index, perm_a, perm_b)
        ctx.groups = groups
        ctx.a_meta = (a_soft.shape, a_soft.dtype)
        ctx.b_meta = (b_soft.shape, b_soft.dtype)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, index, perm_a, perm_b = ctx.saved_tensors
        groups = ctx.groups
        n, c, h, w = y.shape
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = DF.permute_channels(grad_y, DF.invert_permutation(index))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            n1, n2 = perm_a.shape[-1], perm_b.shape[-1]
            dtype = torch.promote_types(grad_y.dtype, y.dtype)
            gy = grad_y.to(dtype).reshape(n, n1, n2, groups * h * w)
            yy = y.to(dtype).reshape(n, n1, n2, groups * h * w)
            a_shape, a_dtype = ctx.a_meta
            b_shape, b_dtype = ctx.b_meta
            if perm_a.dim() == 2:  # one pair per sample, shared by the groups
                gram_a = torch.bmm(gy.reshape(n, n1, -1), yy.reshape(n, n1, -1).transpose(1, 2))
                gram_b = torch.bmm(gy.reshape(n * n1, n2, -1), yy.reshape(n * n1, n2, -1).transpose(1, 2))
                gram_b = gram_b.view(n, n1, n2, n2).sum(1)
            else:
                gy5 = gy.view(n, n1, n2, groups, h * w)
                yy5 = yy.view(n, n1, n2, groups, h * w)
                gram_a = torch.einsum("nijgs,nkjgs->ngik", gy5, yy5)
                gram_b = torch.einsum("nijgs,nikgs->ngjk", gy5, yy5)
            grad_a = gram_a.gather(-1, DF.invert_permutation(perm_a).unsqueeze(-2).expand_as(gram_a))
            grad_b = gram_b.gather(-1, DF.invert_permutation(perm_b).unsqueeze(-2).expand_as(gram_b))
            grad_a = grad_a.reshape(a_shape).to(a_dtype)
            grad_b = grad_b.reshape(b_shape).to(b_dtype)
        return grad_x, grad_a, grad_b, None, None, None, None


RELAXATIONS = ("softmax", "sinkhorn")


class _FactorizedShuffle(nn.Module):
    """Machinery shared by the learned and the dynamic shuffle: logits -> soft / exact permutation.

    Subclasses provide `logits(x)` returning raw logits of A and B shaped `(N|1, G|1, n1, n1)` and
    `(N|1, G|1, n2, n2)`. Everything downstream reads `scaled_logits(x)`: the temperature (and, in training,
    the exploration noise) is applied there and nowhere else, so the soft matrices and the binarization
    always rank the same scores.
    """

    def __init__(self, channels: int, groups: int, factors, temperature: float, share: bool, mode: str,
                 relaxation: str = "softmax", noise: float = 0.0, sinkhorn_iters: int = 5,
                 binarize_rounds: int = 0):
        super().__init__()
        self.n1, self.n2 = DF.check_factors(channels, groups, factors)
        self.channels, self.groups = channels, groups
        self.temperature = temperature
        self.share = bool(share)
        self.mode = mode
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
        self.relaxation = relaxation
        self.noise = noise
        self.sinkhorn_iters = int(sinkhorn_iters)
        self.binarize_rounds = int(binarize_rounds)
        # The orthogonality penalty of the last forward that computed soft matrices (None otherwise).
        self.regularization: Tensor | None = None

    def __getstate__(self):
        # The last penalty is a non-leaf tensor of the last graph: copies (deepcopy for EMA, pickling)
        # start without it.
        state = self.__dict__.copy()
        state["regularization"] = None
        return state

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in SHUFFLE_MODES:
            raise ValueError(f"shuffle mode must be one of {SHUFFLE_MODES}, got {mode!r}")
        self._mode = mode

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"temperature must be > 0 (a finite number), got {value!r}")
        self._temperature = float(value)

    @property
    def noise(self) -> float:
        return self._noise

    @noise.setter
    def noise(self, value: float) -> None:
        self._noise = _check_nonnegative("noise", value)

    def logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def scaled_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`logits(x) / temperature`, plus Gumbel noise of scale `noise` in training: the scores that both
        the soft matrices and the binarization use."""
        logits_a, logits_b = self.logits(x)
        logits_a, logits_b = _as_float32(logits_a), _as_float32(logits_b)
        if self.temperature != 1.0:
            logits_a, logits_b = logits_a / self.temperature, logits_b / self.temperature
        if self.training and self.noise > 0:
            logits_a = logits_a + self.noise * _gumbel_like(logits_a)
            logits_b = logits_b + self.noise * _gumbel_like(logits_b)
        return logits_a, logits_b

    def _squeeze_groups(self, m: Tensor) -> Tensor:
        # Indexing, not squeeze(1): an exported squeeze of a dimension of unknown size becomes an If node.
        return m[:, 0] if self.share else m

    def relax(self, scores: Tensor) -> Tensor:
        """Scores -> soft matrix: row softmax (the paper's), or Sinkhorn (rows and columns sum to 1)."""
        if self.relaxation == "softmax":
            return torch.softmax(scores, dim=-1)
        log_m = scores
        for _ in range(self.sinkhorn_iters):
            log_m = log_m - torch.logsumexp(log_m, dim=-2, keepdim=True)
            log_m = log_m - torch.logsumexp(log_m, dim=-1, keepdim=True)
        return log_m.exp()

    def soft_from_scores(self, scores_a: Tensor, scores_b: Tensor) -> tuple[Tensor, Tensor]:
        return self._squeeze_groups(self.relax(scores_a)), self._squeeze_groups(self.relax(scores_b))

    def soft_factors(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The soft matrices `(A, B)` for `x`: `(N|1, n1, n1)`, `(N|1, n2, n2)` (with a group axis when
        `share=False`). Differentiable."""
        return self.soft_from_scores(*self.scaled_logits(x))

    def penalty(self, a: Tensor, b: Tensor) -> Tensor:
        """Orthogonality penalty of soft factors, batch- (and group-) averaged so that shared and per-group
        modules are on the same scale."""
        return DF.orthogonality_penalty(a).mean() + DF.orthogonality_penalty(b).mean()

    def index_from_scores(self, scores_a: Tensor, scores_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Exact permutations of the scores: `(index (N|1, C), perm_a, perm_b)`; branch-free (`DF.binarize`)."""
        if self.binarize_rounds == 0:
            perm_a, perm_b = DF.binarize_pair(scores_a, scores_b)
        else:
            perm_a = DF.binarize(scores_a, self.binarize_rounds)
            perm_b = DF.binarize(scores_b, self.binarize_rounds)
        perm_a, perm_b = self._squeeze_groups(perm_a), self._squeeze_groups(perm_b)
        return DF.compose_permutation(perm_a, perm_b, self.groups), perm_a, perm_b

    def hard_index(self, x: Tensor) -> Tensor:
        """The composed exact permutation index `(N|1, C)` for `x` (see `permutation`)."""
        if self.fused:
            return self.fused_index(x)
        return self.index_from_scores(*self.scaled_logits(x))[0]

    # Set by `fuse_for_inference`: then `fused_index(x)` replaces the whole eval path.
    fused = False

    def fuse_for_inference(self) -> "_FactorizedShuffle":
        """Turn this module into its inference form, in place (irreversible: it can no longer train)."""
        raise NotImplementedError

    def fused_index(self, x: Tensor) -> Tensor:
        """The index `(N|1, C)` of the fused inference form."""
        raise NotImplementedError

    def uses_soft_path(self) -> bool:
        return self.mode == "soft" or (self.mode == "auto" and self.training)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.channels, type(self).__name__)
        if self.fused:
            return DF.permute_channels(x, self.fused_index(x))
        scores_a, scores_b = self.scaled_logits(x)
        if self.uses_soft_path():
            a, b = self.soft_from_scores(scores_a, scores_b)
            self.regularization = self.penalty(a, b)
            y = DF.kron_shuffle(x, a, b, self.groups)
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                y = y.contiguous(memory_format=torch.channels_last)
            return y
        index, perm_a, perm_b = self.index_from_scores(scores_a, scores_b)
        generator_needs_grad = torch.is_grad_enabled() and scores_a.requires_grad
        if self.mode == "hard" or not (self.training and generator_needs_grad):
            self.regularization = None
            return DF.permute_channels(x, index)
        # "ste": exact permutation forward, soft-matrix gradients backward, so the generator still learns
        # (a bare gather gives it no gradient, and DDP then stops on parameters that received none).
        a, b = self.soft_from_scores(scores_a, scores_b)
        self.regularization = self.penalty(a, b)
        batch = x.shape[0]
        a = a.expand(batch, *a.shape[1:])
        b = b.expand(batch, *b.shape[1:])
        index = index.expand(batch, -1)
        return _StraightThroughShuffle.apply(x, a, b, index, perm_a, perm_b, self.groups)

    @torch.no_grad()
    def permutation(self, x: Tensor) -> Tensor:
        """The exact permutation the hard path applies: LongTensor `(N, C)` with `out[n, c] == x[n, perm[n, c]]`."""
        _check_input(x, self.channels, type(self).__name__)
        return self.hard_index(x).expand(x.shape[0], -1)

    @torch.no_grad()
    def soft_matrices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The soft factors `(A, B)` for input `x`: `(N, n1, n1)`, `(N, n2, n2)` (or with a group axis)."""
        _check_input(x, self.channels, type(self).__name__)
        a, b = self.soft_factors(x)
        return a.expand(x.shape[0], *a.shape[1:]), b.expand(x.shape[0], *b.shape[1:])

    def extra_repr(self) -> str:
        text = (f"channels={self.channels}, groups={self.groups}, factors=({self.n1}, {self.n2}), "
                f"share={self.share}, mode={self.mode!r}, temperature={self.temperature:g}")
        if self.relaxation != "softmax":
            text += f", relaxation={self.relaxation!r}, sinkhorn_iters={self.sinkhorn_iters}"
        if self.noise:
            text += f", noise={self.noise:g}"
        return text


def _as_float32(t: Tensor) -> Tensor:
    # Not .float() on a float32 tensor: an exporter writes a Cast node for it.
    return t if t.dtype == torch.float32 else t.float()


def _gumbel_like(t: Tensor) -> Tensor:
    u = torch.rand_like(t).clamp_(1e-9, 1.0 - 1e-9)
    return -torch.log(-torch.log(u))


def _check_nonnegative(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _check_confidence(confidence: float) -> float:
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


class DynamicShuffle(_FactorizedShuffle):
    """Data-dependent channel shuffle (Dynamic Shuffle, arXiv 2310.02776).

    Args:
        channels: C, the input and output channels.
        groups: G; C must be divisible by G. The cross-group part is ShuffleNet's shuffle with G groups.
        factors: (n1, n2) with n1 * n2 = C / G; default the most balanced factorisation (prime -> (1, n)).
        hidden: the generator's width; default `default_hidden` (about 5 % of a pointwise convolution).
        temperature: divides the logits, for the soft matrices and the binarization alike.
        share: one (A, B) pair per sample shared by all groups (True) or one per group.
        mode: "auto" (soft in training, exact permutation in eval), "soft" (always soft), "ste" (exact
            permutation forward; in training the generator gets the soft matrices' gradient, straight
            through), "hard" (exact permutation, no gradient to the generator and no penalty, even in
            training: a frozen generator).
        confidence: how far the initial soft rows are from uniform (0) toward one-hot at the diagonal (1):
            the diagonal's probability is `1/n + confidence * (1 - 1/n)` (A ≈ I, B ≈ I). Low values keep
            the soft matrices far from a vertex, so the generator can still move between permutations;
            the exact permutation of a fresh module is the fixed shuffle for any value.
        relaxation: "softmax" (row softmax, the paper's) or "sinkhorn" (`sinkhorn_iters` row/column
            normalisations in log space).
        noise: scale of Gumbel noise added to the scaled logits in training (exploration); 0 = none.
        stats: the generator's input: "mean" (pooled means, the paper's squeeze) or "mean_std".
        head_init: std of the generator heads' initial weights (0: every input starts on the fixed shuffle
            in the soft path too).
        activation: the generator's hidden nonlinearity: "relu" (squeeze-excitation's), "gelu",
            "leaky_relu" or "none" (a linear generator).
        binarize_rounds: claim rounds of the branch-free binarization (`functional.binarize`).
        diversity: weight of a reward for soft factors that differ across the batch
            (`functional.batch_variance`), subtracted from the penalty; 0 = none. Measured not to make a
            trained classifier data-dependent (docs/method.md §7.3); kept for experiments.

    After a forward that built soft matrices, `self.regularization` holds that forward's orthogonality
    penalty ‖AAᵀ − I‖² + ‖BBᵀ − I‖² (batch-averaged, differentiable; minus the diversity term).
    `ShuffleSchedule` sets `mode`, `temperature` and `noise` over training.
    """

    def __init__(self, channels: int, groups: int = 2, factors: tuple[int, int] | None = None,
                 hidden: int | None = None, temperature: float = 1.0, share: bool = True,
                 mode: str = "auto", confidence: float = 0.05, *, relaxation: str = "softmax",
                 noise: float = 0.0, sinkhorn_iters: int = 5, stats: str = "mean", head_init: float = 0.0,
                 activation: str = "relu", binarize_rounds: int = 0, diversity: float = 0.0):
        super().__init__(channels, groups, factors, temperature, share, mode, relaxation, noise,
                         sinkhorn_iters, binarize_rounds)
        confidence = _check_confidence(confidence)
        self.diversity = _check_nonnegative("diversity", diversity)
        self.hidden = default_hidden(channels, self.n1, self.n2) if hidden is None else int(hidden)
        if self.hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        heads = 1 if self.share else groups
        # The diagonal bias is scaled by the temperature so that the initial softmax is the same for any T.
        self.generator = ShuffleGenerator(channels, self.hidden, self.n1, self.n2, heads,
                                          _diagonal_logit_fn(confidence, self.temperature), stats, head_init,
                                          activation)

    def logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(self.generator, FusedShuffleGenerator):
            raise RuntimeError("this DynamicShuffle was fused for inference: it only computes exact permutations")
        return self.generator(x)

    def penalty(self, a: Tensor, b: Tensor) -> Tensor:
        """The orthogonality penalty, minus `diversity` x the batch variance of the soft factors
        (`functional.batch_variance`): lower when different inputs pick different permutations."""
        penalty = super().penalty(a, b)
        if self.diversity and a.shape[0] > 1:
            penalty = penalty - self.diversity * (DF.batch_variance(a) + DF.batch_variance(b))
        return penalty

    def fuse_for_inference(self) -> "DynamicShuffle":
        """In place: BatchNorm folded into the generator, one head writing a block-diagonal score matrix for
        A and B, and one softmax, argmax and pair of sorts for both factors (`functional.ranked_columns`).
        The permutations are those of the unfused module (up to float rounding of the folded BatchNorm).
        Irreversible; the module then only runs in eval mode."""
        if self.binarize_rounds:
            raise ValueError("fuse_for_inference needs binarize_rounds=0 (the claim rounds have no fused form)")
        if not isinstance(self.generator, FusedShuffleGenerator):
            self.generator = self.generator.fused(self.temperature)
        self.fused = True
        return self

    def fused_index(self, x: Tensor) -> Tensor:
        ranks = DF.ranked_columns(*DF.row_argmax(self.generator(x)), self.n1 + self.n2)
        return DF.compose_ranks(ranks, self.n1, self.n2, self.groups)

    def extra_repr(self) -> str:
        text = super().extra_repr() + f", hidden={self.hidden}"
        return text + (f", diversity={self.diversity:g}" if self.diversity else "")


def _diagonal_logit_fn(confidence: float, temperature: float):
    return lambda n: temperature * _diagonal_logit(n, confidence)


class LearnedShuffle(_FactorizedShuffle):
    """A learned but input-independent shuffle: the factorised permutation of `DynamicShuffle` with
    logits that are parameters instead of a generator's output (one permutation for every input
    after binarization). The control that separates learning a permutation from data dependence."""

    def __init__(self, channels: int, groups: int = 2, factors: tuple[int, int] | None = None,
                 temperature: float = 1.0, share: bool = True, mode: str = "auto", confidence: float = 0.05,
                 *, relaxation: str = "softmax", noise: float = 0.0, sinkhorn_iters: int = 5,
                 binarize_rounds: int = 0):
        super().__init__(channels, groups, factors, temperature, share, mode, relaxation, noise,
                         sinkhorn_iters, binarize_rounds)
        diagonal = _diagonal_logit_fn(_check_confidence(confidence), self.temperature)
        heads = 1 if self.share else groups
        self.logits_a = nn.Parameter(torch.eye(self.n1).mul(diagonal(self.n1)).repeat(heads, 1, 1))
        self.logits_b = nn.Parameter(torch.eye(self.n2).mul(diagonal(self.n2)).repeat(heads, 1, 1))

    def logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.logits_a.unsqueeze(0), self.logits_b.unsqueeze(0)

    @torch.no_grad()
    def fuse_for_inference(self) -> "LearnedShuffle":
        """In place: the permutation is computed once and kept as a buffer; inference is one index_select."""
        self.register_buffer("fused_permutation", self.index_from_scores(*self.scaled_logits(None))[0],
                             persistent=False)
        self.fused = True
        return self

    def fused_index(self, x: Tensor) -> Tensor:
        return self.fused_permutation


class StaticDynamicShuffle(nn.Module):
    """Static-dynamic shuffle: a light replacement for a C -> C pointwise convolution (docs/design.md §7).

    `y = S_G · blockdiag_g[(A(x) ⊗ B(x)) + (U_g ⊗ V_g)] x (+ bias)`: the dynamic permutation of
    `DynamicShuffle` plus a learnable static Kronecker-factored mixing per group. Costs C·(n1 + n2)
    multiply-adds per pixel for the static part (the dynamic part is a gather at inference) against C²
    for the convolution, and G·(n1² + n2²) static parameters against C².

    `static_impl`: how the static part runs: "factored" (two small matrix products; in soft training
    they are shared with the dynamic part) or "dense" (one grouped 1x1 convolution with the Kronecker
    block materialised). "auto" is "factored": grouped 1x1 convolutions measured 3x slower than a dense
    one on CPU (benchmarks/bench_kron_variants.py), and the factored form costs fewer multiply-adds.
    """

    def __init__(self, channels: int, groups: int = 2, factors: tuple[int, int] | None = None,
                 hidden: int | None = None, temperature: float = 1.0, share: bool = True,
                 mode: str = "auto", bias: bool = False, static_impl: str = "auto", confidence: float = 0.05,
                 **dynamic_options):
        super().__init__()
        # `dynamic_options`: the keyword-only options of DynamicShuffle (relaxation, noise, stats, ...).
        self.dynamic = DynamicShuffle(channels, groups, factors, hidden, temperature, share, mode, confidence,
                                      **dynamic_options)
        self.channels, self.groups = channels, groups
        n1, n2 = self.dynamic.n1, self.dynamic.n2
        if static_impl not in ("auto", "factored", "dense"):
            raise ValueError(f"static_impl must be 'auto', 'factored' or 'dense', got {static_impl!r}")
        if static_impl == "auto":
            static_impl = "factored"
        self.static_impl = static_impl
        # Each entry of U ⊗ V has variance 1 / n, a fan-in initialisation of the dense block.
        self.static_u = nn.Parameter(torch.randn(groups, n1, n1) / math.sqrt(n1))
        self.static_v = nn.Parameter(torch.randn(groups, n2, n2) / math.sqrt(n2))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    @property
    def mode(self) -> str:
        return self.dynamic.mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self.dynamic.mode = mode

    @property
    def regularization(self) -> Tensor | None:
        return self.dynamic.regularization

    def static_weight(self) -> Tensor:
        """The static part as a grouped 1x1 convolution weight `(C, n, 1, 1)` (within-group order)."""
        block = torch.einsum("gik,gjl->gijkl", self.static_u, self.static_v)
        n = self.channels // self.groups
        return block.reshape(self.channels, n, 1, 1)

    def _static(self, x: Tensor) -> Tensor:
        if self.static_impl == "dense":
            y = F.conv2d(x, self.static_weight().to(x.dtype), groups=self.groups)
            return DF.channel_shuffle(y, self.groups) if self.groups > 1 else y
        return DF.kron_shuffle(x, self.static_u.unsqueeze(0), self.static_v.unsqueeze(0), self.groups)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.channels, type(self).__name__)
        dyn = self.dynamic
        if dyn.uses_soft_path() and self.static_impl == "factored":
            # Soft dynamic and static parts share their two matrix products.
            a, b = dyn.soft_factors(x)
            dyn.regularization = dyn.penalty(a, b)
            y = DF.kron_apply_sum(x, a, b, self.static_u.unsqueeze(0), self.static_v.unsqueeze(0), self.groups)
        else:
            y = self._static(x)
            y = y + dyn(x)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1).to(y.dtype)
        return y

    def permutation(self, x: Tensor) -> Tensor:
        return self.dynamic.permutation(x)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, groups={self.groups}, static=({self.dynamic.n1}x{self.dynamic.n1}) ⊗ "
                f"({self.dynamic.n2}x{self.dynamic.n2}) per group, static_impl={self.static_impl!r}, "
                f"bias={self.bias is not None}")


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fuse every learned/dynamic shuffle of `model` into its inference form, in place, and return `model`
    in eval mode. Irreversible: fuse a copy (`copy.deepcopy(model)`) to keep a trainable model. Export uses
    it; the exact permutations are those of the unfused model (BatchNorm folding aside)."""
    model.eval()
    for module in shuffle_modules(model):
        module.fuse_for_inference()
    return model


def shuffle_modules(model: nn.Module) -> Iterator[_FactorizedShuffle]:
    """Every learned or dynamic shuffle module in `model` (those with a mode and a penalty)."""
    for module in model.modules():
        if isinstance(module, _FactorizedShuffle):
            yield module


def orthogonality_loss(model: nn.Module) -> Tensor:
    """Sum of the orthogonality penalties of every shuffle module's last forward (0 when none)."""
    terms = [m.regularization for m in shuffle_modules(model) if m.regularization is not None]
    if terms:
        return torch.stack([t.float() for t in terms]).sum()
    param = next(model.parameters(), None)
    return torch.zeros((), device=param.device if param is not None else None)


def set_shuffle_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every learned/dynamic shuffle module of `model` to `mode` ("auto", "soft", "ste", "hard")."""
    if mode not in SHUFFLE_MODES:
        raise ValueError(f"shuffle mode must be one of {SHUFFLE_MODES}, got {mode!r}")
    for module in shuffle_modules(model):
        module.mode = mode
    return model
