"""`ChannelShuffle`: ShuffleNet's fixed channel shuffle as a module (the "static" shuffle of the models)."""
from __future__ import annotations

from torch import Tensor, nn

from . import functional as DF

__all__ = ["ChannelShuffle"]


class ChannelShuffle(nn.Module):
    """ShuffleNet's fixed channel shuffle: `groups` interleaved (a transpose of the group axis)."""

    def __init__(self, groups: int):
        super().__init__()
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"ChannelShuffle expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] % self.groups:
            raise ValueError(f"ChannelShuffle: {x.shape[1]} channels are not divisible by groups ({self.groups})")
        if self.groups == 1:
            return x
        return DF.channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"

