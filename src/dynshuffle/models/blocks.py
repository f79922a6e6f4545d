"""Pieces shared by the ShuffleNet definitions: argument checks, stems, the shuffle factory and init.

Every model takes the same shuffle arguments; `ShuffleOptions` validates them once and builds, for a
given channel count, the module that sits in the shuffle slot (fixed, learned, dynamic or none) or the
static-dynamic shuffle that replaces an equal-width pointwise convolution.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from torch import nn

from dynshuffle.layers.channel_shuffle import ChannelShuffle
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.functional import factorize
from dynshuffle.layers.learned import LearnedShuffle
from dynshuffle.layers.sds import StaticDynamicShuffle, named_shuffle_layers

# What a shuffle slot holds: "static" is ShuffleNet's fixed ChannelShuffle, "learned" a LearnedShuffle,
# "dynamic" a DynamicShuffle, "none" nothing (an Identity).
SHUFFLE_KINDS = ("static", "learned", "dynamic", "none")
POINTWISE_KINDS = ("conv", "sds")
STEMS = ("imagenet", "tiny", "cifar")
# Input resolution each stem is designed for (docs/design.md §8).
STEM_INPUT_SIZE = {"imagenet": 224, "tiny": 64, "cifar": 32}

FactorsArg = Union[None, int, tuple, Mapping, Callable[[int], tuple]]
HiddenArg = Union[None, int, Callable[[int, int, int], int]]


# Initial confidence of the learned/dynamic/SDS modules of a ShuffleNet when `layer_options` does not
# set one. The layer's default (0.05, nearly uniform soft factors) is what lets one module learn routing;
# in 16 stacked modules of a classifier the same near-uniform mixing smears the features during the soft
# phase and costs most of the accuracy (docs/method.md §7.3).
SHUFFLENET_INITIAL_CONFIDENCE = 0.9


# Generator width of every dynamic / SDS module of a ShuffleNet when `hidden` is not given.
# The layer's own default (`layers.generator.default_hidden`, at least 16) is sized for one module; a
# ShuffleNet carries 16 of them, its heads cost d * (n1² + n2²) parameters each, and ShuffleNetV2's widths
# contain large primes (116 = 4 x 29, 244 = 4 x 61: with G = 2 every head has n2 = 29 at 1.0x, 61 at 2.0x).
# d = 4 is the width that keeps every V1 and V2 within the parameter budget of docs/design.md §6 at any
# class count; docs/models.md ("Generator defaults") has the table for d = 8, 6 and 4.
SHUFFLENET_HIDDEN = 4


def check_choice(what: str, value: Any, choices: tuple) -> str:
    if value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {what} {value!r}; expected one of {expected}")
    return value


def check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def check_width(arch: str, width: Any, widths: tuple[float, ...]) -> float:
    try:
        w = None if isinstance(width, (bool, str)) else float(width)
    except (TypeError, ValueError):
        w = None
    if w is None or w not in widths:
        expected = ", ".join(str(float(x)) for x in widths)
        raise ValueError(f"{arch} width {width!r} is not supported; expected one of {expected}")
    return w


def width_tag(width: float) -> str:
    """1.0 -> 'x1_0', 0.25 -> 'x0_25' (the torchvision-style suffix of the registry names)."""
    text = f"{width:g}"
    if "." not in text:
        text += ".0"
    return "x" + text.replace(".", "_")


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
            groups: int = 1, relu: bool = True) -> list[nn.Module]:
    """[conv (no bias), BN, (ReLU)] as a list, so units can keep torchvision's flat Sequential indices."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def make_stem(stem: str, in_channels: int, out_channels: int) -> tuple[nn.Sequential, nn.Module]:
    """The first convolution (`conv1`) and the pooling after it (`maxpool`, an Identity for CIFAR).

    imagenet: 3x3 stride-2 conv + 3x3 stride-2 max-pool (224 -> 56, ShuffleNet's own stem);
    tiny: 3x3 stride-1 conv + max-pool (64 -> 32: one downsampling less, so the stages see the same
    spatial sizes as CIFAR's); cifar: 3x3 stride-1 conv, no pooling (32 -> 32).
    """
    check_choice("stem", stem, STEMS)
    stride = 2 if stem == "imagenet" else 1
    conv1 = nn.Sequential(*conv_bn(in_channels, out_channels, 3, stride))
    maxpool: nn.Module = nn.MaxPool2d(3, 2, 1) if stem in ("imagenet", "tiny") else nn.Identity()
    return conv1, maxpool


# Keyword options of DynamicShuffle that a model passes through to every learned/dynamic/SDS module
# (`layer_options`); the learned shuffle takes those in LEARNED_OPTIONS.
LAYER_OPTIONS = ("initial_confidence", "relaxation", "noise", "sinkhorn_iters", "stats", "head_init",
                 "activation", "binarize_rounds", "diversity")
LEARNED_OPTIONS = ("initial_confidence", "relaxation", "noise", "sinkhorn_iters", "binarize_rounds")


@dataclass(frozen=True)
class ShuffleOptions:
    """The shuffle arguments of a model, validated, and the factory of its shuffle modules.

    `factors`: None (the layer's most balanced factorisation of n = C / G), an int n1 (n2 = n / n1 in
    every module), a pair (n1, n2) (only where it multiplies to n: one pair rarely fits every stage), a
    mapping {n: (n1, n2)} (missing n -> balanced), or a callable n -> (n1, n2).
    `hidden`: None (the model's default rule), an int, or a callable (channels, n1, n2) -> int.
    `layer_options`: keyword options of the layers (LAYER_OPTIONS), e.g. {"initial_confidence": 0.3}; missing
    keys take the layer's defaults.
    """

    shuffle: str = "static"
    pointwise: str = "conv"
    groups: int = 2
    factors: FactorsArg = None
    hidden: HiddenArg = None
    default_hidden: int | None = None
    temperature: float = 1.0
    share: bool = True
    layer_options: Mapping[str, Any] | None = None

    def __post_init__(self):
        check_choice("shuffle", self.shuffle, SHUFFLE_KINDS)
        check_choice("pointwise", self.pointwise, POINTWISE_KINDS)
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f"shuffle_groups must be a positive integer, got {self.groups!r}")
        if isinstance(self.hidden, bool) or not (self.hidden is None or callable(self.hidden)
                                                 or (isinstance(self.hidden, int) and self.hidden >= 1)):
            raise ValueError(f"hidden must be None, a positive integer or a callable, got {self.hidden!r}")
        try:
            temperature = float(self.temperature)
        except (TypeError, ValueError):
            temperature = float("nan")
        if not temperature > 0 or math.isinf(temperature):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        if not isinstance(self.share, bool):
            raise ValueError(f"share must be True or False, got {self.share!r}")
        unknown = set(self.layer_options or {}) - set(LAYER_OPTIONS)
        if unknown:
            raise ValueError(f"unknown shuffle layer option(s) {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(LAYER_OPTIONS)})")

    def check_channels(self, channels: int, where: str) -> None:
        if channels % self.groups:
            raise ValueError(f"{where}: {channels} channels are not divisible by shuffle_groups={self.groups}")

    def resolve_factors(self, channels: int) -> tuple[int, int]:
        n = channels // self.groups
        f = self.factors
        if f is None:
            return factorize(n)
        if isinstance(f, Mapping):
            pair = f.get(n, f.get(str(n)))  # str keys: a mapping that went through JSON
            return tuple(pair) if pair is not None else factorize(n)
        if callable(f):
            return tuple(f(n))
        if isinstance(f, int) and not isinstance(f, bool):
            if f < 1 or n % f:
                raise ValueError(f"factors={f}: n1 = {f} does not divide n = {channels} / {self.groups} = {n}")
            return f, n // f
        return tuple(f)  # a pair: the layer checks that it multiplies to n

    def resolve_hidden(self, channels: int, n1: int, n2: int) -> int | None:
        if self.hidden is None:
            return self.default_hidden
        if callable(self.hidden):
            return int(self.hidden(channels, n1, n2))
        return int(self.hidden)

    def make_shuffle(self, channels: int) -> nn.Module:
        """The module for a channel-shuffle slot on `channels` channels."""
        if self.shuffle == "none":
            return nn.Identity()
        if self.shuffle == "static":
            return ChannelShuffle(self.groups)
        n1, n2 = self.resolve_factors(channels)
        options = self.resolved_layer_options()
        if self.shuffle == "learned":
            learned = {k: v for k, v in options.items() if k in LEARNED_OPTIONS}
            return LearnedShuffle(channels, self.groups, (n1, n2), self.temperature, self.share, **learned)
        return DynamicShuffle(channels, self.groups, (n1, n2), self.resolve_hidden(channels, n1, n2),
                              self.temperature, self.share, **options)

    def make_sds(self, channels: int) -> StaticDynamicShuffle:
        n1, n2 = self.resolve_factors(channels)
        return StaticDynamicShuffle(channels, self.groups, (n1, n2), self.resolve_hidden(channels, n1, n2),
                                    self.temperature, self.share, **self.resolved_layer_options())

    def resolved_layer_options(self) -> dict:
        """`layer_options` over the ShuffleNet defaults (`initial_confidence` = SHUFFLENET_INITIAL_CONFIDENCE)."""
        return {"initial_confidence": SHUFFLENET_INITIAL_CONFIDENCE, **(self.layer_options or {})}


def init_weights(model: nn.Module, stem_conv: nn.Conv2d) -> None:
    """The official ShuffleNet-Series initialisation (megvii-model/ShuffleNet-Series, V1 and V2).

    Convolutions: N(0, 0.01) for the stem, N(0, 1 / fan-in channels per group) elsewhere (std 1 for a
    depthwise filter); BatchNorm: weight 1, bias 1e-4, running mean 0; Linear: N(0, 0.01), bias 0.
    The shuffle layers (`layers.sds.named_shuffle_layers`) are skipped: their own initialisation makes
    them start as exactly the fixed shuffle, which a generic re-init would destroy.
    """
    skip: set[int] = set()
    for _, layer in named_shuffle_layers(model):
        skip.update(id(m) for m in layer.modules())
    for module in model.modules():
        if id(module) in skip:
            continue
        if isinstance(module, nn.Conv2d):
            std = 0.01 if module is stem_conv else 1.0 / module.weight.shape[1]
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(module.weight)
            nn.init.constant_(module.bias, 1e-4)
            nn.init.zeros_(module.running_mean)
        elif isinstance(module, nn.Linear):
            init_linear(module)


def init_linear(fc: nn.Linear) -> None:
    nn.init.normal_(fc.weight, 0.0, 0.01)
    if fc.bias is not None:
        nn.init.zeros_(fc.bias)


class ShuffleNetBase(nn.Module):
    """What the ShuffleNets share: stem -> stage2..4 (-> conv5 in V2) -> global pool -> dropout -> fc.

    Subclasses build `conv1`, `maxpool`, `stage2`, `stage3`, `stage4`, `conv5` (an Identity in V1),
    `dropout`, `fc`, and set `num_features` and `config`.
    """

    config: dict
    num_features: int

    def forward_features(self, x):
        """Features before global pooling: `(N, num_features, H', W')`."""
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        return self.conv5(x)

    def forward_head(self, x):
        return self.fc(self.dropout(x.mean((2, 3))))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        keys = ("name", "num_classes", "shuffle", "pointwise", "stem", "shuffle_groups")
        return ", ".join(f"{k}={self.config[k]!r}" for k in keys if self.config.get(k) is not None)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with `num_classes` outputs."""
        check_num_classes(num_classes)
        old = self.fc
        self.fc = nn.Linear(self.num_features, num_classes, bias=old.bias is not None,
                            device=old.weight.device, dtype=old.weight.dtype)
        init_linear(self.fc)
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
