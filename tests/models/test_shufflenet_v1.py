"""dynshuffle.models.shufflenet_v1: ShuffleNetV1's structure, its official sizes and registered variants."""
from __future__ import annotations

import pytest
from torch import nn

from dynshuffle.layers.channel_shuffle import ChannelShuffle
from dynshuffle.models.registry import list_models
from dynshuffle.models.shufflenet_v1 import ShuffleNetV1, v1_stem_channels, v1_supported
from dynshuffle.profiling.counting import count_params



V1_OFFICIAL_PARAMS_M = {(3, 0.5): 0.7, (3, 1.0): 1.9, (3, 1.5): 3.4, (3, 2.0): 5.4,
                        (8, 0.5): 1.0, (8, 1.0): 2.4, (8, 1.5): 4.3, (8, 2.0): 6.5}


@pytest.mark.parametrize("groups,width", sorted(V1_OFFICIAL_PARAMS_M))
def test_v1_parameter_counts_match_official_table(groups, width):
    # Tolerance: the published numbers are rounded to 0.1 M, so |ours - table| <= 0.05 M.
    params = count_params(ShuffleNetV1(groups, width))
    assert abs(params / 1e6 - V1_OFFICIAL_PARAMS_M[(groups, width)]) <= 0.05 + 1e-9


def test_v1_structure():
    m = ShuffleNetV1(3, 1.0)
    assert v1_stem_channels(3, 0.5) == 12 and v1_stem_channels(8, 0.5) == 16 and v1_stem_channels(3, 2.0) == 48
    first = m.stage2[0]
    assert first.compress[0].groups == 1, "stage 2's first pointwise conv is not grouped"
    assert m.stage2[1].compress[0].groups == 3 and first.expand[0].groups == 3
    assert first.compress[0].out_channels == 60  # bottleneck = 240 / 4
    assert first.expand[0].out_channels == 240 - 24  # concat with the avg-pooled 24-channel input
    assert isinstance(first.shortcut, nn.AvgPool2d) and m.stage2[1].shortcut is None
    assert isinstance(first.shuffle, ChannelShuffle) and first.shuffle.groups == 3
    assert m.fc.bias is None  # as the official code


def test_v1_supported_combinations_registered():
    names = set(list_models("shufflenet_v1_*"))
    for g in (1, 2, 3, 4, 8):
        for w in (0.25, 0.5, 1.0, 1.5, 2.0):
            tag = f"{w:g}".replace(".", "_") if "." in f"{w:g}" else f"{w:g}_0"
            assert (f"shufflenet_v1_g{g}_x{tag}" in names) == v1_supported(g, w)
    assert {"shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x0_25", "shufflenet_v1_g1_x1_5"} <= names
    assert not v1_supported(4, 0.5) and not v1_supported(2, 0.25)
