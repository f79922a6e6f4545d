"""dynshuffle.layers.dynamic: DynamicShuffle's own parts, its generator width, initial confidence and
diversity reward."""
import pytest
import torch

from dynshuffle.layers import functional as DF
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.generator import ShuffleGenerator


def test_generator_width_and_initial_logits():
    module = DynamicShuffle(116, 2, initial_confidence=0.3)
    assert (module.n1, module.n2, module.hidden) == (2, 29, 16)  # default_hidden's floor
    assert isinstance(module.generator, ShuffleGenerator) and module.generator.heads == 1
    assert DynamicShuffle(232, 2, hidden=5, share=False).generator.heads == 2
    # zero head weights: every input gets the diagonal bias, 1/n + 0.3 (1 - 1/n) on the diagonal
    a, b = module.train().soft_factors(torch.randn(4, 116, 2, 2))
    torch.testing.assert_close(a.diagonal(dim1=-2, dim2=-1), torch.full((4, 2), 0.5 + 0.3 * 0.5))
    torch.testing.assert_close(b.diagonal(dim1=-2, dim2=-1), torch.full((4, 29), 1 / 29 + 0.3 * 28 / 29))
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        DynamicShuffle(12, 2, hidden=0)


def test_diversity_reward_is_the_weighted_batch_variance_of_the_soft_factors():
    torch.manual_seed(0)
    plain = DynamicShuffle(24, groups=2, hidden=8, head_init=1.0, mode="soft").train()
    diverse = DynamicShuffle(24, groups=2, hidden=8, head_init=1.0, mode="soft", diversity=2.0).train()
    diverse.load_state_dict(plain.state_dict())
    x = torch.randn(16, 24, 4, 4)
    plain(x)
    diverse(x)
    a, b = plain.soft_matrices(x)
    variance = DF.batch_variance(a) + DF.batch_variance(b)
    assert variance > 0
    torch.testing.assert_close(diverse.diversity_reward, 2.0 * variance)
    torch.testing.assert_close(diverse.orthogonality_penalty, plain.orthogonality_penalty)  # kept apart
    assert plain.diversity_reward is None
    diverse.diversity_reward.backward()  # differentiable
    assert diverse.generator.head.weight.grad.abs().sum() > 0
    diverse(x[:1])  # one sample has no batch variance: no reward
    assert diverse.diversity_reward is None
    with pytest.raises(ValueError, match="diversity"):
        DynamicShuffle(24, 2, diversity=-1.0)
