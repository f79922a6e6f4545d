"""`LearnedShuffle`: one learned permutation for every input, the control for data dependence."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ShuffleModule, check_initial_confidence, check_input, initial_logit
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

        self._cache: tuple[tuple, Tensor] | None = None

    def flat_logits(self, x: Tensor) -> Tensor:
        return torch.cat([self.logits_a.view(1, -1), self.logits_b.view(1, -1)], 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training or self.mode == "soft" or not self._lean() or torch.compiler.is_compiling():
            return super().forward(x)
        # The exact path in eval: the same permutation for every input and every call until the logits
        # change, so it is computed once and applied as one index_select.
        check_input(x, self.channels, type(self).__name__)
        self.orthogonality_penalty = self.diversity_reward = None
        return x.index_select(1, self._constant_index(x.device))

    def _constant_index(self, device) -> Tensor:
        """The `(C,)` exact permutation, recomputed only when the logits change (an optimizer step or a
        loaded state bumps their version counters) or the temperature or device does."""
        key = tuple((p._version, p.data_ptr()) for p in (self.logits_a, self.logits_b)) + (self.temperature, device)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.exact_index(None)[0].to(device))
        return self._cache[1]

    def __getstate__(self):
        state = super().__getstate__()
        state["_cache"] = None
        return state

    @torch.no_grad()
    def fused(self) -> FusedLearnedShuffle:
        """The inference form (`FusedLearnedShuffle`): the permutation computed once (without noise) and
        kept as a constant index; inference is one index_select."""
        scores = (logits.float() / self.temperature for logits in self.logits(None))
        return FusedLearnedShuffle(self.channels, self.groups, self.index_from_scores(*scores)[0])
