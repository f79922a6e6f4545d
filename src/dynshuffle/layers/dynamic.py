"""`DynamicShuffle`: a channel permutation generated for every input (Dynamic Shuffle, arXiv 2310.02776)."""
from __future__ import annotations

from torch import Tensor

from . import functional as DF
from .base import ShuffleModule, check_initial_confidence, check_nonnegative, initial_logit
from .fused import FusedDynamicShuffle
from .generator import ShuffleGenerator, default_hidden

__all__ = ["DynamicShuffle"]


class DynamicShuffle(ShuffleModule):
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
            through), "frozen" (exact permutation, no gradient to the generator and no penalty, even in
            training: the generator learns nothing).
        initial_confidence: how far the initial soft rows are from uniform (0) toward one-hot at the
            diagonal (1):
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
        diversity: weight of the diversity reward, `diversity` x the batch variance of the soft factors
            (`functional.batch_variance`): higher when different inputs pick different permutations; 0 =
            none. Measured not to make a trained classifier data-dependent (docs/method.md §7.3); kept for
            experiments.

    After a forward that built soft matrices, `self.orthogonality_penalty` holds that forward's
    ‖AAᵀ − I‖² + ‖BBᵀ − I‖² (batch-averaged, differentiable) and `self.diversity_reward` the diversity
    reward (None when `diversity` is 0 or the batch holds one sample); `ShuffleSchedule` subtracts the
    reward from the penalty. It also sets `mode`, `temperature` and `noise` over training.
    """

    def __init__(self, channels: int, groups: int = 2, factors: tuple[int, int] | None = None,
                 hidden: int | None = None, temperature: float = 1.0, share: bool = True,
                 mode: str = "auto", initial_confidence: float = 0.05, *, relaxation: str = "softmax",
                 noise: float = 0.0, sinkhorn_iters: int = 5, stats: str = "mean", head_init: float = 0.0,
                 activation: str = "relu", binarize_rounds: int = 0, diversity: float = 0.0):
        super().__init__(channels, groups, factors, temperature, share, mode, relaxation, noise,
                         sinkhorn_iters, binarize_rounds)
        initial_confidence = check_initial_confidence(initial_confidence)
        self.diversity = check_nonnegative("diversity", diversity)
        self.hidden = default_hidden(channels, self.n1, self.n2) if hidden is None else int(hidden)
        if self.hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        heads = 1 if self.share else groups
        temperature = self.temperature
        self.generator = ShuffleGenerator(channels, self.hidden, self.n1, self.n2, heads,
                                          lambda n: initial_logit(n, initial_confidence, temperature), stats,
                                          head_init, activation)

    def flat_logits(self, x: Tensor) -> Tensor:
        return self.generator(x)

    def record_penalties(self, a: Tensor, b: Tensor, penalty: Tensor | None = None) -> None:
        super().record_penalties(a, b, penalty)
        if self.diversity and a.shape[0] > 1:
            self.diversity_reward = self.diversity * (DF.batch_variance(a) + DF.batch_variance(b))

    def fused(self) -> FusedDynamicShuffle:
        """The inference form (`FusedDynamicShuffle`): BatchNorm folded into the generator, one head writing
        the score rows of A and of B as one matrix, and one argmax and pair of sorts for both
        factors (`functional.ranked_columns`). Its permutations are those of this module (up to float
        rounding of the folded BatchNorm)."""
        if self.binarize_rounds:
            raise ValueError("fuse_for_inference needs binarize_rounds=0 (the claim rounds have no fused form)")
        return FusedDynamicShuffle(self.channels, self.groups, self.n1, self.n2,
                                   self.generator.fused(self.temperature))

    def extra_repr(self) -> str:
        text = super().extra_repr() + f", hidden={self.hidden}"
        return text + (f", diversity={self.diversity:g}" if self.diversity else "")
