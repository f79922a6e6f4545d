"""dynshuffle.layers.channel_shuffle: ShuffleNet's fixed shuffle."""
import pytest
import torch

from dynshuffle.layers.channel_shuffle import ChannelShuffle


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    assert ChannelShuffle(3)(x).flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert torch.equal(ChannelShuffle(1)(x), x)
    assert torch.equal(ChannelShuffle(2)(x), torch.nn.ChannelShuffle(2)(x))
    assert repr(ChannelShuffle(3)) == "ChannelShuffle(groups=3)"


def test_bad_groups_and_inputs():
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        ChannelShuffle(0)
    with pytest.raises(ValueError, match=r"not divisible by groups \(5\)"):
        ChannelShuffle(5)(torch.randn(1, 12, 2, 2))
    with pytest.raises(ValueError, match="4-D input"):
        ChannelShuffle(2)(torch.randn(2, 12))
