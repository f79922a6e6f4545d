"""`ShuffleModule`, the base of every learned or dynamic shuffle, and what a model's shuffle modules add up to.

A shuffle module turns logits into a permutation of its channels: two small score matrices A (n1 x n1) and
B (n2 x n2) per group, applied as the Kronecker product A ⊗ B inside each of the G groups and followed by
ShuffleNet's cross-group shuffle. Training goes through a matrix path (soft, or straight-through: the exact
permutation forward, softmax gradients backward); inference is one gather per sample. `DynamicShuffle`
generates the logits from its input, `LearnedShuffle` holds them as parameters; a `StaticDynamicShuffle`
is not a shuffle module but a pointwise layer built around one.

"Shuffle module" means an instance of `ShuffleModule`, everywhere: `shuffle_modules(model)` yields them
(the one inside an SDS included) and every mode switch, penalty sum, inspection and optimizer rule goes
through it. After a forward on a matrix path a module keeps two numbers for the loss: its
`orthogonality_penalty` (‖AAᵀ − I‖² + ‖BBᵀ − I‖², zero exactly on permutations, docs/design.md §4) and its
`diversity_reward` (only a `DynamicShuffle` with `diversity > 0` has one). The layers know nothing of
training: `ShuffleSchedule` weighs the two.
"""
from __future__ import annotations

import abc
import functools
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from . import functional as DF
from .functional import _tables

__all__ = ["ShuffleModule", "scatter_channels", "SHUFFLE_MODES", "RELAXATIONS", "shuffle_modules", "named_shuffle_modules",
           "has_shuffle_modules", "total_orthogonality_penalty", "total_diversity_reward", "check_mode",
           "check_input", "initial_logit"]

# The paths through a shuffle module (docs/design.md §3):
#   "auto"    soft matrices in training, the exact permutation in eval;
#   "soft"    soft matrices, in eval too;
#   "ste"     the exact permutation forward and, in training, the soft matrices' gradient (straight through);
#   "frozen"  the exact permutation, in training too: the generator (or the logits) gets no gradient and
#             no penalty is recorded, so the module learns nothing (deployment uses it with eval).
SHUFFLE_MODES = ("auto", "soft", "ste", "frozen")
RELAXATIONS = ("softmax", "sinkhorn")


def check_mode(mode: str) -> str:
    if mode not in SHUFFLE_MODES:
        raise ValueError(f"shuffle mode must be one of {SHUFFLE_MODES}, got {mode!r}")
    return mode


def check_input(x: Tensor, channels: int, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D input (N, C, H, W), got {x.dim()}-D shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} was built for {channels} channels, but the input has {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")


def initial_logit(n: int, initial_confidence: float, temperature: float = 1.0) -> float:
    """Logit on the diagonal (others 0) that puts `1/n + initial_confidence * (1 - 1/n)` on the diagonal of a
    row's softmax at `temperature`: the confidence goes from uniform rows (0) to one-hot rows (1), and the
    diagonal stays each row's largest entry for every n (a probability of the confidence itself would put
    the argmax off the diagonal for n = 2 below 0.5, and a fresh module would no longer be the fixed
    shuffle). Scaled by the temperature, so the initial softmax does not depend on it."""
    if n == 1:
        return 0.0
    p = 1.0 / n + initial_confidence * (1.0 - 1.0 / n)
    return temperature * math.log(p * (n - 1) / (1.0 - p))


def check_initial_confidence(value: float) -> float:
    if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
        raise ValueError(f"initial_confidence must be in (0, 1), got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


class _SoftmaxFactors(torch.autograd.Function):
    """Flat scores -> the soft factors `A`, `B` (row softmax) and their orthogonality penalty, with a
    hand-written backward.

    `scores`: `(N|1, D)`, A's scores then B's (`ShuffleModule.flat_scores`); `shape_a`, `shape_b`: the
    factors' shapes (`(N|1, n, n)` shared, `(N|1, G, n, n)` per group). The penalty is
    `mean ‖AAᵀ − I‖² + mean ‖BBᵀ − I‖²` (over samples and groups), computed from the Gram matrices that its
    gradient `4 (AAᵀ − I) A` reuses. Autograd's own graph for the same math dispatches about twice as many
    operators (docs/performance.md, "Operators per step").
    """

    @staticmethod
    def forward(ctx, scores, shape_a, shape_b):
        split = math.prod(shape_a[1:])
        a = torch.softmax(scores[:, :split].view(shape_a), -1)
        b = torch.softmax(scores[:, split:].view(shape_b), -1)
        # Both Gram matrices in one buffer: one op subtracts both identities, one dot sums both penalties,
        # and one op scales both in the backward.
        size_a, size_b = a.numel(), b.numel()
        gram = a.new_empty(size_a + size_b)
        torch.matmul(a, a.mT, out=gram[:size_a].view(a.shape))
        torch.matmul(b, b.mT, out=gram[size_a:].view(b.shape))
        gram.sub_(_tables(_flat_identities)(shape_a, shape_b, gram.dtype, gram.device))
        ctx.save_for_backward(a, b, gram)
        ctx.count = math.prod(shape_a[:-2])
        return a, b, torch.dot(gram, gram).div_(ctx.count)

    @staticmethod
    def backward(ctx, grad_a, grad_b, grad_penalty):
        a, b, gram = ctx.saved_tensors
        grad_a = torch.zeros_like(a) if grad_a is None else grad_a
        grad_b = torch.zeros_like(b) if grad_b is None else grad_b
        if grad_penalty is not None:
            gram = gram * grad_penalty        # d‖G‖²/dA = 4 G A for G = AAᵀ − I; the 4 / count goes in alpha
            n1, n2, scale = a.shape[-1], b.shape[-1], 4.0 / ctx.count
            gram_a, gram_b = gram[:a.numel()].view(-1, n1, n1), gram[a.numel():].view(-1, n2, n2)
            grad_a = torch.baddbmm(grad_a.reshape(-1, n1, n1), gram_a, a.view(-1, n1, n1), alpha=scale).view(a.shape)
            grad_b = torch.baddbmm(grad_b.reshape(-1, n2, n2), gram_b, b.view(-1, n2, n2), alpha=scale).view(b.shape)
        grad_sa = torch._softmax_backward_data(grad_a, a, -1, a.dtype)
        grad_sb = torch._softmax_backward_data(grad_b, b, -1, b.dtype)
        return torch.cat([grad_sa.reshape(a.shape[0], -1), grad_sb.reshape(b.shape[0], -1)], 1), None, None


@functools.lru_cache(maxsize=64)
def _flat_identities(shape_a, shape_b, dtype, device) -> Tensor:
    """Identity matrices laid out as `_SoftmaxFactors`' Gram buffer: `prod(shape_a[:-2])` of size n1, then
    as many of size n2."""
    eye_a = torch.eye(shape_a[-1], dtype=dtype, device=device).expand(shape_a)
    eye_b = torch.eye(shape_b[-1], dtype=dtype, device=device).expand(shape_b)
    return torch.cat([eye_a.reshape(-1), eye_b.reshape(-1)])


class _StraightThroughShuffle(torch.autograd.Function):
    """Exact permutation forward, softmax-matrix gradients backward.

    Forward: input channel `c` of sample `s` is written to row `inverse[s * C + c]` of the output's
    `(N * C, H * W)` view (one scatter: the inverse index needs no second sort, `DF.factor_orders`).
    Backward, as if `y` had been computed by the matrix path with the one-hot matrices: `dx` is a gather
    of `dy` with the same index, and the matrix gradients reduce to Gram products of `dy` with the saved
    output, `dA[i, k] = Σ dY[i, ·] Y[order_a[k], ·]` (likewise B), so no matrix is built.
    """

    @staticmethod
    def forward(ctx, x, a_soft, b_soft, inverse, order, groups):
        y, ctx.channel = _scatter(x, inverse)
        ctx.save_for_backward(y, inverse, order)
        ctx.groups, ctx.n1 = groups, (0 if a_soft is None else a_soft.shape[-1])
        ctx.a_shape = None if a_soft is None else a_soft.shape
        ctx.b_shape = None if b_soft is None else b_soft.shape
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, inverse, order = ctx.saved_tensors
        groups, n1 = ctx.groups, ctx.n1
        n, c, h, w = y.shape
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            if ctx.channel is not None:
                rows = grad_y.permute(0, 2, 3, 1).reshape(n, h * w, c)
                grad_x = torch.gather(rows, 2, ctx.channel).view(n, h, w, c).permute(0, 3, 1, 2)
            else:
                grad_x = grad_y.reshape(n * c, h * w).index_select(0, inverse).view(n, c, h, w)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            n2 = c // (groups * n1)
            dtype = torch.promote_types(grad_y.dtype, y.dtype)
            gy = grad_y.to(dtype).reshape(n, n1, n2, groups * h * w)
            yy = y.to(dtype).reshape(n, n1, n2, groups * h * w)
            order_a, order_b = order[..., :n1], order[..., n1:] - n1
            if order.dim() == 2:  # one pair per sample, shared by the groups
                gram_a = torch.bmm(gy.view(n, n1, -1), yy.view(n, n1, -1).transpose(1, 2))
                gram_b = torch.bmm(gy.view(n * n1, n2, -1), yy.view(n * n1, n2, -1).transpose(1, 2))
                gram_b = gram_b.view(n, n1, n2, n2).sum(1)
            else:
                gy5 = gy.view(n, n1, n2, groups, h * w)
                yy5 = yy.view(n, n1, n2, groups, h * w)
                gram_a = torch.einsum("nijgs,nkjgs->ngik", gy5, yy5)
                gram_b = torch.einsum("nijgs,nikgs->ngjk", gy5, yy5)
            grad_a = gram_a.gather(-1, order_a.unsqueeze(-2).expand_as(gram_a))
            grad_b = gram_b.gather(-1, order_b.unsqueeze(-2).expand_as(gram_b))
            # A factor shared by the batch (a learned shuffle) gets the sum over the samples.
            grad_a = _sum_to(grad_a, ctx.a_shape)
            grad_b = _sum_to(grad_b, ctx.b_shape)
        return grad_x, grad_a, grad_b, None, None, None


def scatter_channels(x: Tensor, inverse: Tensor, order: Tensor, groups: int) -> Tensor:
    """The exact permutation applied by scattering: input channel `c` of sample `s` to row `inverse[s * C + c]`
    of the output's `(N * C, H * W)` view (`DF.inverse_composed_index`); differentiable in `x` (a gather
    backward), no gradient to the factors."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _StraightThroughShuffle.apply(x, None, None, inverse, order, groups)
    return _scatter(x, inverse)[0]  # without an autograd function: its call costs as much as the scatter at batch 1


def _scatter(x: Tensor, inverse: Tensor) -> tuple[Tensor, Tensor | None]:
    """`scatter_channels`' forward: the output, and for a channels-last input the per-pixel channel index
    that its backward gathers with (None otherwise: the backward gathers rows with `inverse`)."""
    n, c, h, w = x.shape
    if _is_channels_last(x):  # scatter along the innermost (channel) axis of the NHWC view
        rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
        channel = (inverse.view(n, c) - _sample_rows(n, c, x.device)).unsqueeze(1).expand(n, h * w, c)
        return torch.empty_like(rows).scatter_(2, channel, rows).view(n, h, w, c).permute(0, 3, 1, 2), channel
    y = x.new_empty(x.shape)
    y.view(n * c, h * w).index_copy_(0, inverse, x.reshape(n * c, h * w))
    return y, None


def _sum_to(grad: Tensor, shape) -> Tensor:
    return grad.sum(0, keepdim=True) if shape[0] == 1 and grad.shape[0] != 1 else grad.view(shape)


def _is_channels_last(x: Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _sample_rows(n: int, c: int, device) -> Tensor:
    return torch.arange(0, n * c, c, device=device).unsqueeze(1)


class ShuffleModule(nn.Module, metaclass=abc.ABCMeta):
    """Base of every learned or dynamic shuffle: logits -> soft matrices or an exact permutation.

    Subclasses provide `logits(x)`, the raw logits of A and B shaped `(N|1, G|1, n1, n1)` and
    `(N|1, G|1, n2, n2)`, and `fused()`, their inference form (a module of its own type, see
    `fuse_for_inference`). Everything downstream reads `scaled_logits(x)`: the temperature (and, in
    training, the Gumbel noise) is applied there and nowhere else, so the soft matrices and the
    binarization always rank the same scores.

    Args: as `DynamicShuffle` (channels, groups, factors, temperature, share, mode, relaxation, noise,
    sinkhorn_iters, binarize_rounds).
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
        # What the last forward on a matrix path recorded for the loss (None after any other forward).
        self.orthogonality_penalty: Tensor | None = None
        self.diversity_reward: Tensor | None = None
        # (tensor slots, their key, fused module) of `inference_form`; a tuple, so that the fused copy is
        # not a registered submodule.
        self._inference_cache: tuple | None = None

    def __getstate__(self):
        # The last penalties are non-leaf tensors of the last graph, and the cached inference form belongs
        # to these parameters: copies (deepcopy for EMA, pickling) start without them.
        state = self.__dict__.copy()
        state["orthogonality_penalty"] = state["diversity_reward"] = None
        state["_inference_cache"] = None
        return state

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self._mode = check_mode(mode)

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
        self._noise = check_nonnegative("noise", value)

    @abc.abstractmethod
    def flat_logits(self, x: Tensor) -> Tensor:
        """Raw logits for input `x`, flat: `(N|1, D)`, A's `(heads, n1, n1)` then B's `(heads, n2, n2)` per
        row (heads = 1 when shared, G otherwise). One tensor, so the training path runs one op where two
        factors would run two."""

    @abc.abstractmethod
    def fused(self) -> nn.Module:
        """The inference form of this module: a new module of its own type (this one is left as it is)."""

    def split_scores(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Flat scores `(N|1, D)` -> views `(N|1, heads, n1, n1)` and `(N|1, heads, n2, n2)`."""
        heads = 1 if self.share else self.groups
        split = heads * self.n1 * self.n1
        # -1 rather than the batch size: an exported graph then needs no Shape/Gather/Concat per reshape.
        return (scores[:, :split].view(-1, heads, self.n1, self.n1),
                scores[:, split:].view(-1, heads, self.n2, self.n2))

    def logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw logits of A and B for input `x`: `(N|1, heads, n1, n1)`, `(N|1, heads, n2, n2)`."""
        return self.split_scores(self.flat_logits(x))

    def flat_scores(self, x: Tensor) -> Tensor:
        """`flat_logits(x) / temperature`, plus Gumbel noise of scale `noise` in training: the scores that
        both the soft matrices and the binarization use (flat, see `flat_logits`)."""
        scores = DF.as_float32(self.flat_logits(x))
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.training and self.noise > 0:
            scores = scores + self.noise * _gumbel_like(scores)
        return scores

    def scaled_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`flat_scores(x)` as the two factors' score matrices (see `split_scores`)."""
        return self.split_scores(self.flat_scores(x))

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

    def soft_factors_and_penalty(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`soft_factors(x)` and their orthogonality penalty (see `record_penalties`), differentiable; with
        the softmax relaxation in one autograd function (`_SoftmaxFactors`)."""
        if not self._lean():
            a, b = self.soft_factors(x)
            return a, b, DF.orthogonality_penalty(a).mean() + DF.orthogonality_penalty(b).mean()
        scores = self.flat_scores(x)
        lead = (scores.shape[0],) if self.share else (scores.shape[0], self.groups)
        return _SoftmaxFactors.apply(scores, lead + (self.n1, self.n1), lead + (self.n2, self.n2))

    def record_penalties(self, a: Tensor, b: Tensor, penalty: Tensor | None = None) -> None:
        """Keep the orthogonality penalty of the soft factors `a`, `b` (batch- and group-averaged, so that
        shared and per-group modules are on the same scale; `penalty` when the caller computed it already)
        for the loss; subclasses with a diversity reward record it here too."""
        if penalty is None:
            penalty = DF.orthogonality_penalty(a).mean() + DF.orthogonality_penalty(b).mean()
        self.orthogonality_penalty = penalty
        self.diversity_reward = None

    def clear_penalties(self) -> None:
        """Record that the last forward left nothing for the loss (an exact or inference forward)."""
        # Assigning through nn.Module.__setattr__ takes microseconds, paid per module in every eval call. A
        # compiled graph assigns unconditionally: reading the attributes would guard on their types, and
        # the first call after a training step (a tensor there, None after) would compile again.
        if torch.compiler.is_compiling() or self.orthogonality_penalty is not None or \
                self.diversity_reward is not None:
            self.orthogonality_penalty = self.diversity_reward = None

    def index_from_scores(self, scores_a: Tensor, scores_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Exact permutations of the scores: `(index (N|1, C), perm_a, perm_b)`; branch-free (`DF.binarize`)."""
        if self.binarize_rounds == 0:
            perm_a, perm_b = DF.binarize_pair(scores_a, scores_b)
        else:
            perm_a = DF.binarize(scores_a, self.binarize_rounds)
            perm_b = DF.binarize(scores_b, self.binarize_rounds)
        perm_a, perm_b = self._squeeze_groups(perm_a), self._squeeze_groups(perm_b)
        return DF.compose_permutation(perm_a, perm_b, self.groups), perm_a, perm_b

    def exact_index(self, x: Tensor) -> Tensor:
        """The composed exact permutation index `(N|1, C)` for `x` (see `permutation`): the inference form's
        where the forward runs it, so that `permutation` reports what the forward applies."""
        fused = self.inference_form()
        if fused is not None:
            return fused.exact_index(x)
        return self.index_from_scores(*self.scaled_logits(x))[0]

    def uses_soft_path(self) -> bool:
        return self.mode == "soft" or (self.mode == "auto" and self.training)

    def inference_form(self) -> nn.Module | None:
        """The fused module (`fused()`) that this module's eval forward and `permutation` run, or None where
        they take the unfused path (training, mode "soft", an option without a lean path, under an exporter
        or torch.compile, which trace the unfused math).

        The fused form computes only the permutation (BatchNorm folded, one head and one sort for both
        factors; a learned shuffle's permutation is a constant), in fewer operators than the unfused path
        (docs/performance.md, "Operators per step"). It is built on first use and rebuilt when a parameter
        or buffer changes (an optimizer step, a BatchNorm update or a loaded state bumps its version counter
        or replaces its storage) or the temperature or device does: an eval after every epoch rebuilds it
        once. Its permutations are this module's up to the float rounding of the folding. (A submodule
        replaced after the first eval, e.g. a new generator head, is not noticed: build a new module.)
        """
        if self.training or self.mode == "soft" or torch.compiler.is_compiling() or not self._lean():
            return None
        cache = self._inference_cache
        if cache is not None and cache[1] == self._state_key(cache[0]):
            return cache[2]
        slots = [(table, name) for module in self.modules() for table in (module._parameters, module._buffers)
                 for name, t in table.items() if t is not None]
        # Built outside inference mode: the fused copy's tensors must also serve a later plain eval.
        with torch.inference_mode(False), torch.no_grad():
            fused = self.fused().eval()
        self._inference_cache = (slots, self._state_key(slots), fused)
        return fused

    def _state_key(self, slots) -> tuple:
        """What `inference_form`'s cache depends on: each tensor's version counter and storage (read through
        its owning module's dict, so a replaced parameter counts too: cheaper than walking `parameters()`,
        which at batch 1 costs as much as the permutation), the temperature and the device."""
        tensors = [table[name] for table, name in slots]
        return tuple((t._version, t.data_ptr()) for t in tensors) + (self.temperature, tensors[0].device)

    def _lean(self) -> bool:
        """Whether the forward takes the launch-lean path: softmax relaxation, no claim rounds, not traced by
        an exporter (which records the gather form, `DF.permute_channels`)."""
        return self.relaxation == "softmax" and not self.binarize_rounds and not DF.is_tracing()

    def forward(self, x: Tensor) -> Tensor:
        fused = self.inference_form()
        if fused is not None:
            self.clear_penalties()
            # `forward`, not `__call__`: the cached form is private (no hooks), and at batch 1 a second
            # module call per shuffle is measurable.
            return fused.forward(x)
        check_input(x, self.channels, type(self).__name__)
        if self.uses_soft_path():
            a, b, penalty = self.soft_factors_and_penalty(x)
            self.record_penalties(a, b, penalty)
            y = DF.kron_shuffle(x, a, b, self.groups)
            return y.contiguous(memory_format=torch.channels_last) if _is_channels_last(x) else y
        if not self._lean():
            return self._exact_general(x)
        learns = self.mode != "frozen" and self.training and torch.is_grad_enabled()
        if learns:
            # "ste": exact permutation forward, soft-matrix gradients backward, so the generator still learns
            # (a bare gather gives it no gradient, and DDP then stops on parameters that received none).
            a, b, penalty = self.soft_factors_and_penalty(x)
            learns = a.requires_grad
        if learns:
            self.record_penalties(a, b, penalty)
            order = DF.factor_orders(a, b)
        else:
            self.clear_penalties()
            with torch.no_grad():
                order = DF.factor_orders(*self.split_scores(self.flat_scores(x)))
            order = order[:, 0] if self.share else order
            a = b = None
        inverse = DF.inverse_composed_index(order, self.n1, self.n2, self.groups, x.shape[0])
        return _StraightThroughShuffle.apply(x, a, b, inverse, order, self.groups)

    def _exact_general(self, x: Tensor) -> Tensor:
        """The exact path for every option (Sinkhorn, claim rounds) and under exporters: `binarize`, a gather."""
        scores_a, scores_b = self.scaled_logits(x)
        index, perm_a, perm_b = self.index_from_scores(scores_a, scores_b)
        generator_needs_grad = torch.is_grad_enabled() and scores_a.requires_grad
        if self.mode == "frozen" or not (self.training and generator_needs_grad):
            self.clear_penalties()
            return DF.permute_channels(x, index)
        a, b = self.soft_from_scores(scores_a, scores_b)
        self.record_penalties(a, b)
        order = torch.cat([DF.invert_permutation(perm_a), DF.invert_permutation(perm_b) + self.n1], -1)
        inverse = DF.inverse_composed_index(order, self.n1, self.n2, self.groups, x.shape[0])
        return _StraightThroughShuffle.apply(x, a, b, inverse, order, self.groups)

    @torch.no_grad()
    def permutation(self, x: Tensor) -> Tensor:
        """The exact permutation applied to `x`: LongTensor `(N, C)` with `out[n, c] == x[n, perm[n, c]]`."""
        check_input(x, self.channels, type(self).__name__)
        return self.exact_index(x).expand(x.shape[0], -1)

    @torch.no_grad()
    def soft_matrices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The soft factors `(A, B)` for input `x`: `(N, n1, n1)`, `(N, n2, n2)` (or with a group axis)."""
        check_input(x, self.channels, type(self).__name__)
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


def _gumbel_like(t: Tensor) -> Tensor:
    u = torch.rand_like(t).clamp_(1e-9, 1.0 - 1e-9)
    return -torch.log(-torch.log(u))


def named_shuffle_modules(model: nn.Module) -> Iterator[tuple[str, ShuffleModule]]:
    """`(name, module)` of every shuffle module in `model`, in definition order (the dynamic part of a
    StaticDynamicShuffle appears as `<sds>.dynamic`)."""
    for name, module in model.named_modules():
        if isinstance(module, ShuffleModule):
            yield name, module


def shuffle_modules(model: nn.Module) -> Iterator[ShuffleModule]:
    """Every shuffle module in `model` (see the module docstring)."""
    for _, module in named_shuffle_modules(model):
        yield module


def has_shuffle_modules(model: nn.Module) -> bool:
    """Whether `model` holds a shuffle module (a fixed-shuffle model has nothing to schedule or inspect)."""
    return next(shuffle_modules(model), None) is not None


def _total(model: nn.Module, attribute: str) -> Tensor:
    terms = [t for t in (getattr(m, attribute) for m in shuffle_modules(model)) if t is not None]
    if terms:
        return torch.stack([t.float() for t in terms]).sum()
    param = next(model.parameters(), None)
    return torch.zeros((), device=param.device if param is not None else None)


def total_orthogonality_penalty(model: nn.Module) -> Tensor:
    """Sum of the orthogonality penalties the shuffle modules recorded in their last forward (0 when none)."""
    return _total(model, "orthogonality_penalty")


def total_diversity_reward(model: nn.Module) -> Tensor:
    """Sum of the diversity rewards the shuffle modules recorded in their last forward (0 when none)."""
    return _total(model, "diversity_reward")
