"""dynshuffle.deploy.conversion: `convert` turns the fixed shuffles of a user's network into DynamicShuffle (same
function), and 1x1 convs into SDS."""
import logging

import pytest
import torch
from torch import nn

from dynshuffle.deploy.conversion import convert, is_equal_width_pointwise
from dynshuffle.layers.channel_shuffle import ChannelShuffle
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.sds import StaticDynamicShuffle
from dynshuffle.models.registry import create_model



class Block(nn.Module):
    """A custom module holding a shuffle as an attribute."""

    def __init__(self, channels, groups, shuffle_cls):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=groups)
        self.bn = nn.BatchNorm2d(channels)
        self.shuffle = shuffle_cls(groups)

    def forward(self, x):
        return self.shuffle(torch.relu(self.bn(self.conv(x))))


class UserNet(nn.Module):
    """Shuffles nested in Sequential, ModuleList, ModuleDict and custom modules; one shared module."""

    def __init__(self):
        super().__init__()
        shared = nn.ChannelShuffle(2)
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ChannelShuffle(3))
        self.blocks = nn.ModuleList([Block(12, 4, ChannelShuffle), Block(12, 2, nn.ChannelShuffle)])
        self.heads = nn.ModuleDict({"a": nn.Sequential(nn.Conv2d(12, 24, 1), shared),
                                    "b": nn.Sequential(nn.Conv2d(24, 24, 1, bias=False), shared)})
        self.tail = nn.Sequential(nn.Conv2d(24, 24, 1, stride=2), nn.Conv2d(24, 24, 3, padding=1),
                                  nn.Conv2d(24, 24, 1, groups=2), nn.Conv2d(24, 16, 1))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.heads["b"](self.heads["a"](x))
        return self.fc(self.tail(x).mean((2, 3)))


def _net(seed=0):
    torch.manual_seed(seed)
    net = UserNet()
    net.eval()
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    return net


def test_converted_network_computes_the_same_function(caplog):
    net = _net()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
    with caplog.at_level(logging.INFO, logger="dynshuffle.deploy.conversion"):
        converted, report = convert(net, example_input=x[:1], return_report=True)
    # The original is left untouched (a deep copy was converted).
    assert isinstance(net.stem[1], nn.ChannelShuffle)
    assert isinstance(converted.stem[1], DynamicShuffle) and converted.stem[1].channels == 12
    assert converted.stem[1].groups == 3
    assert isinstance(converted.blocks[0].shuffle, DynamicShuffle) and converted.blocks[0].shuffle.groups == 4
    assert isinstance(converted.blocks[1].shuffle, DynamicShuffle)
    shared = converted.heads["a"][1]
    assert isinstance(shared, DynamicShuffle) and shared is converted.heads["b"][1] and shared.channels == 24
    assert not any(isinstance(m, (nn.ChannelShuffle, ChannelShuffle)) for m in converted.modules())
    assert len(report) == 4 and not any(r.changes_function for r in report)
    assert {r.name for r in report} == {"stem.1", "blocks.0.shuffle", "blocks.1.shuffle", "heads.a.1"}
    assert "shared at 2 places" in [r for r in report if r.name == "heads.a.1"][0].note
    assert "stem.1: ChannelShuffle(groups=3) -> DynamicShuffle(channels=12, groups=3" in caplog.text
    converted.eval()
    with torch.no_grad():
        assert torch.equal(converted(x), before)


def test_converted_network_trains_its_generators():
    converted = convert(_net(), torch.randn(1, 3, 8, 8))
    converted.train()
    out = converted(torch.randn(4, 3, 8, 8))
    from dynshuffle.layers.base import total_orthogonality_penalty

    (out.square().mean() + total_orthogonality_penalty(converted)).backward()
    grad = converted.stem[1].generator.head.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_registry_static_shufflenet_converts_to_the_same_function():
    model = create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    converted = convert(model, x)
    assert sum(isinstance(m, DynamicShuffle) for m in converted.modules()) == 16
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))


def test_pointwise_convolutions_become_sds():
    net = _net()
    x = torch.randn(2, 3, 8, 8)
    converted, report = convert(net, x, pointwise=True, return_report=True)
    b = converted.heads["b"][0]
    assert isinstance(b, StaticDynamicShuffle) and b.bias is None and b.channels == 24 and b.groups == 2
    # Not equal width / strided / 3x3 / grouped / width-changing: kept.
    assert [type(m) for m in converted.tail] == [nn.Conv2d] * 4
    assert isinstance(converted.heads["a"][0], nn.Conv2d)  # 12 -> 24
    sds_rows = [r for r in report if "StaticDynamicShuffle" in r.new]
    assert len(sds_rows) == 1 and sds_rows[0].changes_function
    with torch.no_grad():
        assert converted.eval()(x).shape == (2, 5)
    # sds= is an alias; a bias is carried over.
    conv = nn.Sequential(nn.Conv2d(6, 6, 1), nn.ReLU())
    out = convert(conv, sds=True)
    assert isinstance(out[0], StaticDynamicShuffle) and torch.equal(out[0].bias, conv[0].bias)
    odd = convert(nn.Sequential(nn.Conv2d(5, 5, 1)), pointwise=True)
    assert odd[0].groups == 1  # 5 channels are not divisible by 2
    assert not is_equal_width_pointwise(nn.Conv2d(4, 4, 1, padding=1))


def test_options_and_errors():
    net = _net()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="example_input"):
        convert(net)
    converted, report = convert(net, x, groups_from=2, hidden=3, return_report=True)
    assert all(r.groups == 2 for r in report) and converted.stem[1].hidden == 3
    assert [r.changes_function for r in report if r.name == "stem.1"] == [True]  # 3 groups became 2
    with pytest.raises(ValueError, match="groups_from"):
        convert(net, x, groups_from="layer")

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.ChannelShuffle(2), nn.ChannelShuffle(2)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match="did not run.*unused"):
        convert(Unused(), torch.randn(1, 4, 2, 2))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shuffle = nn.ChannelShuffle(2)

        def forward(self, x):
            return self.shuffle(torch.cat([self.shuffle(x), x], 1))

    with pytest.raises(ValueError, match="different channel counts"):
        convert(Twice(), torch.randn(1, 4, 2, 2))
    with pytest.warns(UserWarning, match="channel_shuffle"):
        convert(nn.Sequential(nn.Conv2d(3, 3, 3)), torch.randn(1, 3, 4, 4))
    inplace = _net()
    assert convert(inplace, x, inplace=True) is inplace and isinstance(inplace.stem[1], DynamicShuffle)


def test_torchvision_shufflenet_needs_its_shuffle_calls_replaced():
    tv = pytest.importorskip("torchvision", reason="torchvision does not import here")
    model = tv.models.shufflenet_v2_x0_5().eval()
    x = torch.randn(1, 3, 64, 64)
    # torchvision shuffles with a function call: convert finds nothing and says so.
    with pytest.warns(UserWarning, match="channel_shuffle"):
        convert(model, x)

    # Give each unit a shuffle module (the documented recipe), then convert: same function.
    from torchvision.models.shufflenetv2 import InvertedResidual

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)

    for m in model.modules():
        if isinstance(m, InvertedResidual):
            m.shuffle = nn.ChannelShuffle(2)
            m.forward = forward.__get__(m)
    with torch.no_grad():
        before = model(x)
        converted = convert(model, x)
        assert sum(isinstance(m, DynamicShuffle) for m in converted.modules()) == 16
        assert torch.allclose(converted(x), before)
