"""ShuffleNetV2 (Ma et al., 2018) with a choice of channel shuffle and of equal-width pointwise layer.

The structure is torchvision's `shufflenetv2.py` (module names included: `conv1`, `maxpool`, `stage2..4`,
`conv5`, `fc`, units with `branch1` / `branch2`), so a static 1.0x with the ImageNet stem has exactly
torchvision's 2,278,604 parameters; the shuffle at the end of every unit is a separate `shuffle`
submodule that can be the fixed shuffle, a learned or dynamic one, or nothing.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import (
    ShuffleNetBase,
    ShuffleOptions,
    check_choice,
    check_num_classes,
    check_width,
    conv_bn,
    init_weights,
    make_stem,
    width_tag,
    STEMS,
    SHUFFLENET_HIDDEN,
)
from .registry import register_model

__all__ = ["ShuffleNetV2", "ShuffleV2Unit", "V2_WIDTHS",
           "shufflenet_v2_x0_5", "shufflenet_v2_x0_625", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]

# width -> (stage widths, conv5 width): the paper's Table 5 / torchvision / ShuffleNet-Series, and 0.625 (not
# the paper's), the width at which the SDS model costs the fixed 0.5x's multiply-adds (docs/method.md §8.4):
# SDS replaces C² by C·(n1 + n2) per pixel in the branches, so it has the budget for wider stages.
V2_WIDTHS: dict[float, tuple[tuple[int, int, int], int]] = {
    0.5: ((48, 96, 192), 1024),
    0.625: ((60, 120, 240), 1024),
    1.0: ((116, 232, 464), 1024),
    1.5: ((176, 352, 704), 1024),
    2.0: ((244, 488, 976), 2048),
}
V2_REPEATS = (4, 8, 4)
V2_STEM_CHANNELS = 24


class ShuffleV2Unit(nn.Module):
    """One ShuffleNetV2 unit: split (or copy), branch, concat, shuffle.

    stride 1: the input's halves x1, x2; out = shuffle(cat(x1, branch2(x2))). stride 2: both branches
    see the whole input and halve the resolution; out = shuffle(cat(branch1(x), branch2(x))).
    `branch2` = 1x1 conv, BN, ReLU, 3x3 depthwise, BN, 1x1 conv, BN, ReLU. With `pointwise="sds"` the
    two equal-width 1x1 convolutions of stride-1 units become StaticDynamicShuffle modules (BN and ReLU
    stay); stride-2 units keep their convolutions (their first 1x1 changes the width).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, options: ShuffleOptions):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if out_channels % 2:
            raise ValueError(f"ShuffleV2Unit needs an even number of output channels, got {out_channels}")
        branch = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 unit keeps the width: in {in_channels} != out {out_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

        if stride == 2:
            self.branch1 = nn.Sequential(
                *conv_bn(in_channels, in_channels, 3, 2, groups=in_channels, relu=False),
                *conv_bn(in_channels, branch, 1),
            )
        else:
            self.branch1 = nn.Sequential()  # as torchvision: the identity half carries no layers

        sds = options.pointwise == "sds" and stride == 1
        first = options.make_sds(branch) if sds else nn.Conv2d(in_channels if stride == 2 else branch,
                                                               branch, 1, bias=False)
        last = options.make_sds(branch) if sds else nn.Conv2d(branch, branch, 1, bias=False)
        self.branch2 = nn.Sequential(
            first, nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            *conv_bn(branch, branch, 3, stride, groups=branch, relu=False),
            last, nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
        )
        self.shuffle = options.make_shuffle(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}"


class ShuffleNetV2(ShuffleNetBase):
    """ShuffleNetV2 with a choice of shuffle, equal-width pointwise layer and stem.

    Args:
        width: channel multiplier, one of 0.5, 1.0, 1.5, 2.0 (stage widths 48/96/192, 116/232/464,
            176/352/704, 244/488/976; conv5 1024, 2048 at 2.0x; 4/8/4 units per stage).
        num_classes: classifier outputs.
        shuffle: "static" (ShuffleNet's fixed shuffle with `shuffle_groups` groups), "learned"
            (LearnedShuffle), "dynamic" (DynamicShuffle) or "none" (no shuffle at all: the identity,
            the ablation showing what the shuffle is for).
        pointwise: "conv" or "sds" (StaticDynamicShuffle replaces the two equal-width 1x1 convolutions
            of every stride-1 unit's branch).
        stem: "imagenet" (224x224), "tiny" (64x64) or "cifar" (32x32); see `make_stem`.
        shuffle_groups: G of every shuffle / SDS module (default 2, ShuffleNetV2's shuffle).
        factors, hidden, temperature, share, layer_options: passed to the learned/dynamic/SDS modules
            (`factors` and `hidden` also accept per-module rules, see `ShuffleOptions`); `hidden=None`
            means `SHUFFLENET_HIDDEN` (4: the parameter budget, see its comment).
        dropout: before the classifier; None = the official choice (0.2 at 2.0x, none otherwise).
        in_channels: image channels.

    The module records `config` (its constructor arguments and its registry name).
    """

    def __init__(self, width: float = 1.0, num_classes: int = 1000, *, shuffle: str = "static",
                 pointwise: str = "conv", stem: str = "imagenet", shuffle_groups: int | None = None,
                 factors=None, hidden=None, temperature: float = 1.0, share: bool = True,
                 dropout: float | None = None, in_channels: int = 3, layer_options: dict | None = None):
        super().__init__()
        width = check_width("ShuffleNetV2", width, tuple(V2_WIDTHS))
        check_num_classes(num_classes)
        check_choice("stem", stem, STEMS)
        if dropout is None:
            dropout = 0.2 if width == 2.0 else 0.0
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        options = ShuffleOptions(shuffle, pointwise, 2 if shuffle_groups is None else shuffle_groups,
                                 factors, hidden, SHUFFLENET_HIDDEN, temperature, share,
                                 layer_options)
        self.config = {
            "name": f"shufflenet_v2_{width_tag(width)}", "arch": "shufflenet_v2", "width": width,
            "num_classes": num_classes, "shuffle": shuffle, "pointwise": pointwise, "stem": stem,
            "shuffle_groups": shuffle_groups, "factors": factors, "hidden": hidden,
            "temperature": temperature, "share": share,
            "layer_options": dict(layer_options) if layer_options else None,
            "dropout": dropout, "in_channels": in_channels,
        }
        self.width, self.num_classes, self.stem = width, num_classes, stem
        stage_widths, head_width = V2_WIDTHS[width]
        for stage, channels in zip((2, 3, 4), stage_widths):
            if shuffle != "none":
                options.check_channels(channels, f"ShuffleNetV2 width {width} stage {stage}")
            if pointwise == "sds":
                options.check_channels(channels // 2, f"ShuffleNetV2 width {width} stage {stage} (SDS on "
                                                      f"the branch's {channels // 2} channels)")

        self.conv1, self.maxpool = make_stem(stem, in_channels, V2_STEM_CHANNELS)
        channels = V2_STEM_CHANNELS
        for stage, (repeats, out_channels) in enumerate(zip(V2_REPEATS, stage_widths), start=2):
            units = [ShuffleV2Unit(channels, out_channels, 2, options)]
            units += [ShuffleV2Unit(out_channels, out_channels, 1, options) for _ in range(repeats - 1)]
            setattr(self, f"stage{stage}", nn.Sequential(*units))
            channels = out_channels
        self.conv5 = nn.Sequential(*conv_bn(channels, head_width, 1))
        self.num_features = head_width
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(head_width, num_classes)
        init_weights(self, self.conv1[0])


def _build(width: float, kwargs: dict) -> ShuffleNetV2:
    """The ShuffleNetV2 of a registered width; a `width` in `kwargs` must agree."""
    given = kwargs.pop("width", width)
    if given != width:
        raise ValueError(f"shufflenet_v2_{width_tag(width)} has width {width}; got width={given!r}")
    return ShuffleNetV2(width, **kwargs)


@register_model
def shufflenet_v2_x0_5(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 0.5x; keyword arguments as `ShuffleNetV2`."""
    return _build(0.5, kwargs)


@register_model
def shufflenet_v2_x0_625(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 0.625x (stages 60, 120, 240; not in the paper): the SDS model at the fixed 0.5x's
    multiply-adds; keyword arguments as `ShuffleNetV2`."""
    return _build(0.625, kwargs)


@register_model
def shufflenet_v2_x1_0(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x; keyword arguments as `ShuffleNetV2`."""
    return _build(1.0, kwargs)


@register_model
def shufflenet_v2_x1_5(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.5x; keyword arguments as `ShuffleNetV2`."""
    return _build(1.5, kwargs)


@register_model
def shufflenet_v2_x2_0(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 2.0x; keyword arguments as `ShuffleNetV2`."""
    return _build(2.0, kwargs)
