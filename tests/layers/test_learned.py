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
