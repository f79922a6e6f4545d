"""Fixtures of the inspection tests: a small user network with every kind of shuffle module, and images."""
import pytest
import torch
from torch import nn

from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.learned import LearnedShuffle
from dynshuffle.layers.sds import StaticDynamicShuffle


class UserNet(nn.Module):
    """Small network with a shared and a per-group dynamic shuffle, a learned one and an SDS."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.shared = DynamicShuffle(12, 2)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1, groups=12),
                                  DynamicShuffle(12, 3, share=False))
        self.learned = LearnedShuffle(12, 2)
        self.sds = StaticDynamicShuffle(12, 2)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = self.body(self.shared(self.stem(x)))
        return self.fc(self.sds(self.learned(x)).mean((2, 3)))


@pytest.fixture
def user_net(random_generators):
    """`user_net(seed=0)`: a UserNet with random, calibrated generators (input-dependent permutations); the
    same seed gives the same network."""
    def make(seed=0):
        torch.manual_seed(seed)
        return random_generators(UserNet(), seed=seed)

    return make


@pytest.fixture
def images():
    """`images(n, seed=0, size=8)`: random normalised images (n, 3, size, size)."""
    def make(n, seed=0, size=8):
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))

    return make
