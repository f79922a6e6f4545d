"""dynshuffle.models.shufflenet_v2: ShuffleNetV2's structure and its parameter budget."""
from __future__ import annotations

import math

import pytest

from dynshuffle.models.shufflenet_v2 import ShuffleNetV2
from dynshuffle.profiling.counting import count_macs, count_params


def test_torchvision_parameter_counts_exact():
    # torchvision's shufflenet_v2_x{0_5,1_0,1_5,2_0} (static shuffle, ImageNet stem, 1000 classes).
    expected = {0.5: 1_366_792, 1.0: 2_278_604, 1.5: 3_503_624, 2.0: 7_393_996}
    for width, count in expected.items():
        assert count_params(ShuffleNetV2(width)) == count, width


def test_v2_stage_widths_and_head():
    m = ShuffleNetV2(2.0)
    assert [m.stage2[0].out_channels, m.stage3[0].out_channels, m.stage4[0].out_channels] == [244, 488, 976]
    assert m.conv5[0].out_channels == 2048 and m.num_features == 2048
    assert [len(m.stage2), len(m.stage3), len(m.stage4)] == [4, 8, 4]
    # torchvision: branch1 only exists (has layers) in stride-2 units.
    assert len(m.stage2[0].branch1) > 0 and len(m.stage2[1].branch1) == 0


@pytest.mark.parametrize("width", [0.5, 1.0, 1.5, 2.0])
def test_dynamic_budget_every_v2_width(width):
    """docs/design.md §6: <= 10 % parameters and <= 2 % multiply-adds over the fixed shuffle."""
    static = ShuffleNetV2(width)
    dynamic = ShuffleNetV2(width, shuffle="dynamic")
    assert count_params(dynamic) <= 1.10 * count_params(static)
    assert count_macs(dynamic, 224) <= 1.02 * count_macs(static, 224)
    # the small-classifier, small-input case is the hard one for both budgets
    static = ShuffleNetV2(width, 10, stem="cifar")
    dynamic = ShuffleNetV2(width, 10, stem="cifar", shuffle="dynamic")
    assert count_params(dynamic) <= 1.10 * count_params(static)
    assert count_macs(dynamic, 32) <= 1.02 * count_macs(static, 32)
    assert not math.isclose(count_params(dynamic), count_params(static))
