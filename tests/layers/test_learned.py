"""dynshuffle.layers.learned: LearnedShuffle, one learned permutation for every input."""
import torch

from dynshuffle.layers import functional as DF
from dynshuffle.layers.learned import LearnedShuffle


def test_one_permutation_for_all_inputs(randomize):
    module = randomize(LearnedShuffle(24, 2)).eval()
    perms = module.permutation(torch.randn(5, 24, 2, 2))
    logits_a, logits_b = module.logits(None)
    pa, pb = DF.binarize_pair(logits_a, logits_b)
    assert torch.equal(perms, DF.compose_permutation(pa[:, 0], pb[:, 0], 2).expand(5, -1))


def test_logits_start_on_the_diagonal():
    module = LearnedShuffle(24, 3, share=False, initial_confidence=0.5, temperature=2.0)
    assert module.logits_a.shape == (3, 2, 2) and module.logits_b.shape == (3, 4, 4)
    a, b = module.soft_factors(None)
    torch.testing.assert_close(a.diagonal(dim1=-2, dim2=-1), torch.full((1, 3, 2), 0.75))
    torch.testing.assert_close(b.diagonal(dim1=-2, dim2=-1), torch.full((1, 3, 4), 0.25 + 0.5 * 0.75))


def test_eval_permutation_is_cached_until_the_logits_or_temperature_change():
    torch.manual_seed(0)
    module = LearnedShuffle(24, 2).eval()
    x = torch.randn(2, 24, 2, 2)
    first = module(x)
    cached = module._cache[1]
    assert torch.equal(module(x), first) and module._cache[1] is cached  # no recomputation
    with torch.no_grad():  # what an optimizer step does: an in-place update of the logits
        module.logits_a.copy_(torch.eye(module.n1).flip(0).mul(50.0).unsqueeze(0))
    moved = module(x)
    assert module._cache[1] is not cached
    torch.testing.assert_close(moved, DF.permute_channels(x, module.permutation(x)))
    assert not torch.equal(moved, first)
    module.temperature = 3.0
    module(x)
    assert module._cache[0][-2] == 3.0
