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
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from . import functional as DF

__all__ = ["ShuffleModule", "SHUFFLE_MODES", "RELAXATIONS", "shuffle_modules", "named_shuffle_modules",
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

    def __getstate__(self):
        # The last penalties are non-leaf tensors of the last graph: copies (deepcopy for EMA, pickling)
        # start without them.
        state = self.__dict__.copy()
        state["orthogonality_penalty"] = state["diversity_reward"] = None
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
    def logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw logits of A and B for input `x`."""

    @abc.abstractmethod
    def fused(self) -> nn.Module:
        """The inference form of this module: a new module of its own type (this one is left as it is)."""

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

    def record_penalties(self, a: Tensor, b: Tensor) -> None:
        """Keep the orthogonality penalty of the soft factors `a`, `b` (batch- and group-averaged, so that
        shared and per-group modules are on the same scale) for the loss; subclasses with a diversity
        reward record it here too."""
        self.orthogonality_penalty = DF.orthogonality_penalty(a).mean() + DF.orthogonality_penalty(b).mean()
        self.diversity_reward = None

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
        """The composed exact permutation index `(N|1, C)` for `x` (see `permutation`)."""
        return self.index_from_scores(*self.scaled_logits(x))[0]

    def uses_soft_path(self) -> bool:
        return self.mode == "soft" or (self.mode == "auto" and self.training)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, type(self).__name__)
        scores_a, scores_b = self.scaled_logits(x)
        if self.uses_soft_path():
            a, b = self.soft_from_scores(scores_a, scores_b)
            self.record_penalties(a, b)
            y = DF.kron_shuffle(x, a, b, self.groups)
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                y = y.contiguous(memory_format=torch.channels_last)
            return y
        index, perm_a, perm_b = self.index_from_scores(scores_a, scores_b)
        generator_needs_grad = torch.is_grad_enabled() and scores_a.requires_grad
        if self.mode == "frozen" or not (self.training and generator_needs_grad):
            self.orthogonality_penalty = self.diversity_reward = None
            return DF.permute_channels(x, index)
        # "ste": exact permutation forward, soft-matrix gradients backward, so the generator still learns
        # (a bare gather gives it no gradient, and DDP then stops on parameters that received none).
        a, b = self.soft_from_scores(scores_a, scores_b)
        self.record_penalties(a, b)
        batch = x.shape[0]
        a = a.expand(batch, *a.shape[1:])
        b = b.expand(batch, *b.shape[1:])
        index = index.expand(batch, -1)
        return _StraightThroughShuffle.apply(x, a, b, index, perm_a, perm_b, self.groups)

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


def _as_float32(t: Tensor) -> Tensor:
    # Not .float() on a float32 tensor: an exporter writes a Cast node for it.
    return t if t.dtype == torch.float32 else t.float()


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
