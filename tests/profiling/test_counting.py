"""dynshuffle.profiling.counting: parameters, multiply-adds, FLOPs and activation memory, and `profile`."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dynshuffle.layers.base import shuffle_modules
from dynshuffle.layers.sds import StaticDynamicShuffle
from dynshuffle.models.shufflenet_v1 import ShuffleNetV1
from dynshuffle.models.shufflenet_v2 import ShuffleNetV2
from dynshuffle.profiling.counting import (ProfileResult, count_conv_linear_macs, count_flops, count_macs, count_params,
                                           input_shape, peak_activation_bytes, profile)
from dynshuffle.profiling.formatting import format_bytes, format_count


def test_grouped_and_depthwise_conv_macs():
    grouped = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False))
    assert count_macs(grouped, (8, 10, 10)) == 16 * (8 // 4) * 9 * 100
    assert count_conv_linear_macs(grouped, (8, 10, 10)) == 16 * 2 * 9 * 100
    depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False), nn.Flatten(),
                              nn.Linear(8 * 25, 3))
    assert count_macs(depthwise, (8, 10, 10)) == 8 * 9 * 25 + 200 * 3
    assert count_conv_linear_macs(depthwise, (8, 10, 10)) == 8 * 9 * 25 + 200 * 3


def test_shufflenet_v2_macs_match_published():
    # Published: 41 M (0.5x) and 146 M (1.0x) at 224x224. Ours counts convolutions and the classifier
    # only (no BatchNorm/pooling); 2 % covers the counters' conventions.
    for width, published in ((0.5, 41e6), (1.0, 146e6)):
        model = ShuffleNetV2(width)
        macs = count_macs(model, 224)
        assert abs(macs - published) <= 0.02 * published, (width, macs)
        assert macs == count_conv_linear_macs(model, 224)  # the two counters agree on a static model
    assert count_macs(ShuffleNetV2(1.0), 224) == 144_907_992


def test_shufflenet_v1_macs_match_published():
    # ShuffleNet-Series: 1.0x g=3 138 M, 1.0x g=8 138 M, 0.5x g=8 40 M. Ours (convolutions + classifier)
    # must be within 0.5 M + 1 %: the published numbers are rounded to 1 M, and their counter's treatment
    # of pooling (the 3x3 average-pool shortcuts) is unknown.
    for groups, width, published in ((3, 1.0, 138e6), (8, 1.0, 138e6), (8, 0.5, 40e6)):
        macs = count_macs(ShuffleNetV1(groups, width), 224)
        assert abs(macs - published) <= 0.5e6 + 0.01 * published, (groups, width, macs)


def _sds_inputs(model, size):
    """{SDS module: (C, H, W) of its input} from one eval forward."""
    seen = {}
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.__setitem__(mod, tuple(args[0].shape[1:])))
               for m in model.modules() if isinstance(m, StaticDynamicShuffle)]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    for h in handles:
        h.remove()
    return seen


def _fused_generator_macs(model) -> int:
    """C·d (reduce) + d·k·width (the head) per shuffle module: k = n1 + n2 rows of width max(n1, n2)."""
    return sum(m.hidden * (m.channels + (m.n1 + m.n2) * max(m.n1, m.n2))
               for m in shuffle_modules(model))


def test_the_shuffle_work_is_counted_exactly():
    kw = {"num_classes": 10, "stem": "cifar"}
    static, dynamic = ShuffleNetV2(0.5, **kw), ShuffleNetV2(0.5, shuffle="dynamic", **kw)
    learned, sds = ShuffleNetV2(0.5, shuffle="learned", **kw), ShuffleNetV2(0.5, pointwise="sds", **kw)
    # the generators' linears, once per image, in the inference form that eval runs: C·d (reduce) + d·k·width
    # (one head writing the score rows of A and B, k = n1 + n2 rows of width max(n1, n2))
    generators = _fused_generator_macs(dynamic)
    assert generators == 15296
    assert count_macs(dynamic, 32) - count_macs(static, 32) == generators
    assert count_macs(learned, 32) == count_macs(static, 32)  # inference is a gather: nothing to count
    # What the conv/linear hooks cannot see: SDS's mixing, C·(n1 + n2) per pixel (factored), and the inference
    # form of its generator (functional linears, as above)
    mixing = sum(c * (m.dynamic.n1 + m.dynamic.n2) * h * w for m, (c, h, w) in _sds_inputs(sds, 32).items())
    sds_generators = _fused_generator_macs(sds)
    assert count_macs(sds, 32) - count_conv_linear_macs(sds, 32) == mixing + sds_generators
    # a static model's training FLOPs are twice its multiply-adds (no elementwise work is counted there)
    assert count_flops(static, 32) == 2 * count_macs(static, 32)
    # the training FLOPs of each variant (CIFAR stem, 10 classes; docs/models.md has the tables)
    assert [format_count(count_flops(m, 32)) for m in (static, learned, dynamic, sds)] == \
        ["21.8 M", "24.7 M", "24.8 M", "17.5 M"]


def test_peak_activation_bytes():
    model = ShuffleNetV2(0.5, 10, stem="cifar", shuffle="dynamic")
    b2 = peak_activation_bytes(model, 32, batch=2)
    b4 = peak_activation_bytes(model, 32, batch=4)
    assert b2 > 0 and abs(b4 / b2 - 2) < 0.1
    assert peak_activation_bytes(model, 32, batch=1) == b2 // 2
    assert format_bytes(peak_activation_bytes(ShuffleNetV2(0.5, 10, stem="cifar"), 32)) == "19.4 MiB"  # at batch 8
    assert format_bytes(peak_activation_bytes(model, 32)) == "26.6 MiB"
    with pytest.raises(ValueError, match="batch"):
        peak_activation_bytes(model, 32, batch=0)


def test_profile_is_the_counters_and_leaves_the_model_alone():
    model = ShuffleNetV2(0.5, 10, stem="cifar", shuffle="dynamic").eval()
    model.train()
    model(torch.randn(2, 3, 32, 32))  # leaves a non-leaf penalty in the modules: profile must cope
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = profile(model, 32, batch=2)
    assert isinstance(result, ProfileResult)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (result.name, result.shuffle, result.pointwise, result.stem) == ("shufflenet_v2_x0_5", "dynamic", "conv", "cifar")
    assert (result.params, result.macs, result.flops, result.peak_activation_bytes) == (
        count_params(model), count_macs(model, 32), count_flops(model, 32), peak_activation_bytes(model, 32, 2))
    row = result.as_row()
    assert row["input_size"] == "3x32x32" and row["params"] == result.params
    assert str(result) == ("shufflenet_v2_x0_5 (shuffle=dynamic, pointwise=conv, stem=cifar) @ 3x32x32: params 368 k, "
                           "MACs 10.9 M, train FLOPs 24.8 M, peak activations 6.68 MiB at batch 2")
    by_name = profile("shufflenet_v2_x0_5", (32, 32), num_classes=10, stem="cifar", batch=2)
    assert by_name.params == profile(ShuffleNetV2(0.5, 10, stem="cifar"), 32).params
    with pytest.raises(ValueError, match="input_size"):
        profile(model, (3, 0, 32))
    with pytest.raises(ValueError, match="need a model name"):
        profile(model, 32, num_classes=10)


def test_input_shape():
    assert input_shape(32) == (3, 32, 32) and input_shape((28, 30)) == (3, 28, 30) and input_shape((1, 8, 9)) == (1, 8, 9)
