"""ShuffleNetV1 (Zhang et al., 2018) with a choice of channel shuffle.

Stage widths, repeats, stems and initialisation follow the paper's Table 1 and the official
megvii-model/ShuffleNet-Series code; the channel shuffle sits where the paper draws it (after the
first 1x1 group convolution's ReLU, on the bottleneck channels) as a separate `shuffle` submodule.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

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

__all__ = ["ShuffleNetV1", "ShuffleV1Unit", "V1_GROUPS", "V1_WIDTHS", "v1_stage_widths", "v1_stem_channels",
           "v1_supported",
           "shufflenet_v1_g1_x0_25",
           "shufflenet_v1_g1_x0_5",
           "shufflenet_v1_g1_x1_0",
           "shufflenet_v1_g1_x1_5",
           "shufflenet_v1_g1_x2_0",
           "shufflenet_v1_g2_x1_0",
           "shufflenet_v1_g2_x2_0",
           "shufflenet_v1_g3_x0_25",
           "shufflenet_v1_g3_x0_5",
           "shufflenet_v1_g3_x1_0",
           "shufflenet_v1_g3_x1_5",
           "shufflenet_v1_g3_x2_0",
           "shufflenet_v1_g4_x1_0",
           "shufflenet_v1_g4_x2_0",
           "shufflenet_v1_g8_x0_25",
           "shufflenet_v1_g8_x0_5",
           "shufflenet_v1_g8_x1_0",
           "shufflenet_v1_g8_x1_5",
           "shufflenet_v1_g8_x2_0",
           ]

# groups -> stage widths at 1.0x (the paper's Table 1).
V1_STAGE_WIDTHS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
V1_GROUPS = tuple(V1_STAGE_WIDTHS)
V1_WIDTHS = (0.25, 0.5, 1.0, 1.5, 2.0)
V1_REPEATS = (4, 8, 4)


def v1_stage_widths(groups: int, width: float) -> tuple[int, int, int]:
    return tuple(int(round(c * width)) for c in V1_STAGE_WIDTHS[groups])


def v1_stem_channels(groups: int, width: float) -> int:
    """The official stem width: 24 at 1.0x and 1.5x, 48 at 2.0x, 24·width rounded up to a multiple of
    the groups below 1.0x (ShuffleNet-Series: 12 for g=3 and 16 for g=8 at 0.5x; the rounding keeps the
    first unit's concat branch, stage width - stem width, divisible by the groups)."""
    if width >= 2.0:
        return 48
    if width >= 1.0:
        return 24
    base = int(round(24 * width))
    return int(math.ceil(base / groups) * groups)


def _v1_channel_problem(groups: int, width: float) -> str | None:
    """Why ShuffleNetV1 (groups, width) cannot be built (a grouped convolution does not divide), or None."""
    channels = v1_stem_channels(groups, width)
    what = f"ShuffleNetV1 width {width} with groups {groups}"
    for stage, out in zip((2, 3, 4), v1_stage_widths(groups, width)):
        mid = out // 4
        if mid % groups:
            return (f"{what} gives {mid} bottleneck channels in stage {stage} (stage width {out} // 4), "
                    f"not divisible by {groups}")
        if (out - channels) % groups or (stage > 2 and channels % groups):
            return (f"{what} gives {out - channels} branch channels in stage {stage}'s first unit "
                    f"({out} - {channels}), not divisible by {groups}")
        channels = out
    return None


def v1_supported(groups: int, width: float) -> bool:
    """Whether ShuffleNetV1 with `groups` and `width` exists (every grouped convolution divides)."""
    return groups in V1_STAGE_WIDTHS and width in V1_WIDTHS and _v1_channel_problem(groups, width) is None


def _check_v1_channels(groups: int, width: float) -> None:
    problem = _v1_channel_problem(groups, width)
    if problem:
        ok = ", ".join(str(w) for w in V1_WIDTHS if v1_supported(groups, w))
        raise ValueError(f"{problem}; widths that work with groups {groups}: {ok}")


class ShuffleV1Unit(nn.Module):
    """One ShuffleNetV1 unit (the paper's Fig. 2 b/c).

    compress: 1x1 group conv (groups `conv_groups`; 1 in the very first unit, whose input is the
    24-channel stem), BN, ReLU -> `shuffle` on the bottleneck channels -> 3x3 depthwise (stride), BN
    -> expand: 1x1 group conv, BN -> stride 1: ReLU(x + y); stride 2: cat(avgpool3x3s2(x), ReLU(y)),
    so a stride-2 unit's branch produces `out - in` channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int,
                 shuffle: nn.Module):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 unit keeps the width: in {in_channels} != out {out_channels}")
        mid = out_channels // 4
        branch = out_channels - in_channels if stride == 2 else out_channels
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.compress = nn.Sequential(*conv_bn(in_channels, mid, 1, groups=first_groups))
        self.shuffle = shuffle
        self.depthwise = nn.Sequential(*conv_bn(mid, mid, 3, stride, groups=mid, relu=False))
        self.expand = nn.Sequential(*conv_bn(mid, branch, 1, groups=groups, relu=False))
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(self.depthwise(self.shuffle(self.compress(x))))
        if self.shortcut is None:
            return F.relu(x + y)
        # The input is a ReLU output, so its average is non-negative: ReLU only the new branch.
        return torch.cat((self.shortcut(x), F.relu(y)), dim=1)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}, "
                f"groups={self.groups}")


class ShuffleNetV1(ShuffleNetBase):
    """ShuffleNetV1 with a choice of shuffle.

    Args:
        groups: g of the 1x1 group convolutions, one of 1, 2, 3, 4, 8 (stage widths at 1.0x 144, 200,
            240, 272, 384, doubling per stage; 4/8/4 units; bottleneck = stage width / 4; the first
            unit's 1x1 conv is not grouped).
        width: multiplier 0.25, 0.5, 1.0, 1.5 or 2.0 (not every width divides into every g:
            `v1_supported(groups, width)`; g = 2 and 4 work at 1.0 and 2.0 only).
        num_classes, stem, shuffle: as `ShuffleNetV2` ("none" removes the shuffle; with g = 1 the
            static shuffle is the identity too).
        pointwise: "conv" or "sds". ShuffleNetV1 has no equal-width 1x1 convolution (its 1x1 convs
            compress to or expand from the bottleneck), so there is nothing SDS could replace like for
            like; with "sds" a StaticDynamicShuffle takes the channel shuffle's slot on the bottleneck
            channels instead: it contains the dynamic shuffle plus a static group-wise Kronecker mixing,
            i.e. it adds a cheap pointwise layer where the shuffle was. It therefore replaces the shuffle
            and only combines with `shuffle="static"` (any other shuffle raises ValueError).
        shuffle_groups: G of the learned/dynamic/SDS modules (default `groups`; must divide the
            bottleneck channels).
        factors, hidden, temperature, share, layer_options: passed to the learned/dynamic/SDS modules
            (`hidden=None`: `SHUFFLENET_HIDDEN`, 4, as in ShuffleNetV2: the parameter budget of small
            models).
        dropout: before the classifier (default none, as the official code).

    The classifier has no bias, as in the official code. The module records `config`.
    """

    def __init__(self, groups: int = 3, width: float = 1.0, num_classes: int = 1000, *,
                 shuffle: str = "static", pointwise: str = "conv", stem: str = "imagenet",
                 shuffle_groups: int | None = None, factors=None, hidden=None, temperature: float = 1.0,
                 share: bool = True, dropout: float = 0.0, in_channels: int = 3,
                 layer_options: dict | None = None):
        super().__init__()
        if isinstance(groups, bool) or groups not in V1_GROUPS:
            raise ValueError(f"ShuffleNetV1 groups must be one of {', '.join(map(str, V1_GROUPS))}, got {groups!r}")
        width = check_width("ShuffleNetV1", width, V1_WIDTHS)
        _check_v1_channels(groups, width)
        check_num_classes(num_classes)
        check_choice("stem", stem, STEMS)
        if pointwise == "sds" and shuffle != "static":
            raise ValueError(f"ShuffleNetV1 with pointwise='sds' puts the static-dynamic shuffle in the channel "
                             f"shuffle's slot, so it cannot be combined with shuffle={shuffle!r}; use "
                             f"shuffle='static'")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        options = ShuffleOptions(shuffle, pointwise, groups if shuffle_groups is None else shuffle_groups,
                                 factors, hidden, SHUFFLENET_HIDDEN, temperature, share,
                                 layer_options)
        self.config = {
            "name": f"shufflenet_v1_g{groups}_{width_tag(width)}", "arch": "shufflenet_v1", "groups": groups,
            "width": width, "num_classes": num_classes, "shuffle": shuffle, "pointwise": pointwise,
            "stem": stem, "shuffle_groups": shuffle_groups, "factors": factors, "hidden": hidden,
            "temperature": temperature, "share": share,
            "layer_options": dict(layer_options) if layer_options else None,
            "dropout": dropout, "in_channels": in_channels,
        }
        self.groups, self.width, self.num_classes, self.stem = groups, width, num_classes, stem
        stage_widths = v1_stage_widths(groups, width)
        if shuffle != "none" or pointwise == "sds":
            for stage, out in zip((2, 3, 4), stage_widths):
                options.check_channels(out // 4, f"ShuffleNetV1 g{groups} width {width} stage {stage} bottleneck")

        channels = v1_stem_channels(groups, width)
        self.conv1, self.maxpool = make_stem(stem, in_channels, channels)
        for stage, (repeats, out_channels) in enumerate(zip(V1_REPEATS, stage_widths), start=2):
            units = []
            for i in range(repeats):
                first_groups = 1 if (stage == 2 and i == 0) else groups
                mid = out_channels // 4
                slot = (options.make_sds(mid) if pointwise == "sds"
                        else options.make_shuffle(mid))
                units.append(ShuffleV1Unit(channels, out_channels, 2 if i == 0 else 1, groups, first_groups, slot))
                channels = out_channels
            setattr(self, f"stage{stage}", nn.Sequential(*units))
        self.conv5 = nn.Identity()
        self.num_features = channels
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes, bias=False)
        init_weights(self, self.conv1[0])


def _build(groups: int, width: float, kwargs: dict) -> ShuffleNetV1:
    """The ShuffleNetV1 of a registered (groups, width) variant; `groups`/`width` in `kwargs` must agree."""
    name = f"shufflenet_v1_g{groups}_{width_tag(width)}"
    for key, fixed in (("groups", groups), ("width", width)):
        given = kwargs.pop(key, fixed)
        if given != fixed:
            raise ValueError(f"{name} has {key} {fixed:g}; got {key}={given!r}")
    return ShuffleNetV1(groups, width, **kwargs)


# One registered definition per variant: every (groups, width) pair for which `v1_supported` holds.


@register_model
def shufflenet_v1_g1_x0_25(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 0.25x, g = 1; keyword arguments as `ShuffleNetV1`."""
    return _build(1, 0.25, kwargs)


@register_model
def shufflenet_v1_g1_x0_5(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 0.5x, g = 1; keyword arguments as `ShuffleNetV1`."""
    return _build(1, 0.5, kwargs)


@register_model
def shufflenet_v1_g1_x1_0(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 1x, g = 1; keyword arguments as `ShuffleNetV1`."""
    return _build(1, 1.0, kwargs)


@register_model
def shufflenet_v1_g1_x1_5(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 1.5x, g = 1; keyword arguments as `ShuffleNetV1`."""
    return _build(1, 1.5, kwargs)


@register_model
def shufflenet_v1_g1_x2_0(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 2x, g = 1; keyword arguments as `ShuffleNetV1`."""
    return _build(1, 2.0, kwargs)


@register_model
def shufflenet_v1_g2_x1_0(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 1x, g = 2; keyword arguments as `ShuffleNetV1`."""
    return _build(2, 1.0, kwargs)


@register_model
def shufflenet_v1_g2_x2_0(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 2x, g = 2; keyword arguments as `ShuffleNetV1`."""
    return _build(2, 2.0, kwargs)


@register_model
def shufflenet_v1_g3_x0_25(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 0.25x, g = 3; keyword arguments as `ShuffleNetV1`."""
    return _build(3, 0.25, kwargs)


@register_model
def shufflenet_v1_g3_x0_5(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 0.5x, g = 3; keyword arguments as `ShuffleNetV1`."""
    return _build(3, 0.5, kwargs)


@register_model
def shufflenet_v1_g3_x1_0(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 1x, g = 3; keyword arguments as `ShuffleNetV1`."""
    return _build(3, 1.0, kwargs)


@register_model
def shufflenet_v1_g3_x1_5(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 1.5x, g = 3; keyword arguments as `ShuffleNetV1`."""
    return _build(3, 1.5, kwargs)


@register_model
def shufflenet_v1_g3_x2_0(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 2x, g = 3; keyword arguments as `ShuffleNetV1`."""
    return _build(3, 2.0, kwargs)


@register_model
def shufflenet_v1_g4_x1_0(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 1x, g = 4; keyword arguments as `ShuffleNetV1`."""
    return _build(4, 1.0, kwargs)


@register_model
def shufflenet_v1_g4_x2_0(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 2x, g = 4; keyword arguments as `ShuffleNetV1`."""
    return _build(4, 2.0, kwargs)


@register_model
def shufflenet_v1_g8_x0_25(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 0.25x, g = 8; keyword arguments as `ShuffleNetV1`."""
    return _build(8, 0.25, kwargs)


@register_model
def shufflenet_v1_g8_x0_5(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 0.5x, g = 8; keyword arguments as `ShuffleNetV1`."""
    return _build(8, 0.5, kwargs)


@register_model
def shufflenet_v1_g8_x1_0(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 1x, g = 8; keyword arguments as `ShuffleNetV1`."""
    return _build(8, 1.0, kwargs)


@register_model
def shufflenet_v1_g8_x1_5(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 1.5x, g = 8; keyword arguments as `ShuffleNetV1`."""
    return _build(8, 1.5, kwargs)


@register_model
def shufflenet_v1_g8_x2_0(**kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 2x, g = 8; keyword arguments as `ShuffleNetV1`."""
    return _build(8, 2.0, kwargs)
