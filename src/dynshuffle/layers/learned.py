"""`LearnedShuffle`: one learned permutation for every input, the control for data dependence."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ShuffleModule, check_initial_confidence, initial_logit
from .fused import FusedLearnedShuffle

__all__ = ["LearnedShuffle"]


class LearnedShuffle(ShuffleModule):
    """A learned but input-independent shuffle: the factorised permutation of `DynamicShuffle` with
    logits that are parameters instead of a generator's output (one permutation for every input
    after binarization). The control that separates learning a permutation from data dependence.

    Args: as `DynamicShuffle`, without the generator's (hidden, stats, head_init, activation, diversity).
    """

    def __init__(self, channels: int, groups: int = 2, factors: tuple[int, int] | None = None,
                 temperature: float = 1.0, share: bool = True, mode: str = "auto",
                 initial_confidence: float = 0.05, *, relaxation: str = "softmax", noise: float = 0.0,
                 sinkhorn_iters: int = 5, binarize_rounds: int = 0):
        super().__init__(channels, groups, factors, temperature, share, mode, relaxation, noise,
                         sinkhorn_iters, binarize_rounds)
        initial_confidence = check_initial_confidence(initial_confidence)
        heads = 1 if self.share else groups

        def diagonal(n: int) -> Tensor:
            return torch.eye(n).mul(initial_logit(n, initial_confidence, self.temperature)).repeat(heads, 1, 1)

        self.logits_a = nn.Parameter(diagonal(self.n1))
        self.logits_b = nn.Parameter(diagonal(self.n2))

    def flat_logits(self, x: Tensor) -> Tensor:
        return torch.cat([self.logits_a.view(1, -1), self.logits_b.view(1, -1)], 1)

    @torch.no_grad()
    def fused(self) -> FusedLearnedShuffle:
        """The inference form (`FusedLearnedShuffle`): the permutation computed once (without noise) and
        kept as a constant index; inference is one index_select."""
        scores = (logits.float() / self.temperature for logits in self.logits(None))
        return FusedLearnedShuffle(self.channels, self.groups, self.index_from_scores(*scores)[0])
