"""Put dynamic shuffle into someone else's network: `convert` swaps fixed channel shuffles for DynamicShuffle.

A fixed channel shuffle module (`torch.nn.ChannelShuffle`, or `dynshuffle.ChannelShuffle`) only knows its
group count; a DynamicShuffle also needs the channel count, because its generator and its factor
matrices are sized by it. `convert` therefore runs one forward pass with an example input, recording
each shuffle's input channels with forward pre-hooks, and then replaces the modules. A fresh
DynamicShuffle is exactly the fixed shuffle with the same groups in eval mode, so the converted model
computes the same function until it is trained (fine-tuned) with the dynamic shuffles.

Networks that shuffle with a function call instead of a module, such as torchvision's ShuffleNetV2
(`torchvision.models.shufflenetv2.channel_shuffle(x, 2)` inside `InvertedResidual.forward`), have nothing
`convert` can see: give such a block a shuffle module (e.g. subclass it with `self.shuffle =
nn.ChannelShuffle(2)` called in `forward`) before converting, or build the model with
`dynshuffle.create_model(..., shuffle="dynamic")`, whose ShuffleNetV2 keeps torchvision's module names.
"""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from dynshuffle.layers.channel_shuffle import ChannelShuffle
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.sds import StaticDynamicShuffle

__all__ = ["convert", "Replacement", "is_fixed_shuffle", "is_equal_width_pointwise"]

log = logging.getLogger(__name__)

FIXED_SHUFFLE_TYPES = (nn.ChannelShuffle, ChannelShuffle)


@dataclass
class Replacement:
    """One module `convert` replaced: where, what it was, what it became."""

    name: str              # qualified module name (the first one, when the module is shared)
    old: str               # e.g. "ChannelShuffle(groups=2)"
    new: str               # e.g. "DynamicShuffle(channels=116, groups=2, factors=(2, 29))"
    channels: int
    groups: int
    changes_function: bool  # False for shuffles (a fresh DynamicShuffle equals them), True for 1x1 convs
    note: str = ""


def is_fixed_shuffle(module: nn.Module) -> bool:
    """A module that applies ShuffleNet's fixed channel shuffle (exact types, not subclasses of other things)."""
    return isinstance(module, FIXED_SHUFFLE_TYPES)


def is_equal_width_pointwise(module: nn.Module) -> bool:
    """A plain C -> C 1x1 convolution: kernel 1, stride 1, no padding, no dilation, one group."""
    return (type(module) is nn.Conv2d and module.in_channels == module.out_channels
            and module.kernel_size == (1, 1) and module.stride == (1, 1) and module.dilation == (1, 1)
            and module.groups == 1 and module.padding in ((0, 0), "valid"))


def _record_channels(model: nn.Module, shuffles: dict[int, nn.Module], example_input) -> dict[int, int]:
    """Input channels of each shuffle module (keyed by id), from one eval-mode forward of `model`."""
    seen: dict[int, set] = {key: set() for key in shuffles}

    def hook(module, args):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"a channel shuffle received input {shape}; DynamicShuffle needs (N, C, H, W)")
        seen[id(module)].add(int(x.shape[1]))

    handles = [m.register_forward_pre_hook(hook) for m in shuffles.values()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            elif isinstance(example_input, dict):
                model(**example_input)
            else:
                model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    # -1 marks a module called with several channel counts; modules that never ran are absent.
    return {key: (next(iter(v)) if len(v) == 1 else -1) for key, v in seen.items() if v}


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)  # Sequential / ModuleList / ModuleDict keep their entry under the same key


def convert(model: nn.Module, example_input=None, *, groups_from: str | int = "module", pointwise: bool = False,
            sds: bool | None = None, pointwise_groups: int = 2, inplace: bool = False, return_report: bool = False,
            **dynamic_kwargs):
    """Replace every fixed channel shuffle in `model` by a DynamicShuffle (and optionally 1x1 convs by SDS).

    Args:
        model: any nn.Module containing `nn.ChannelShuffle` / `dynshuffle.ChannelShuffle` modules (anywhere:
            Sequential, ModuleList, ModuleDict, custom modules; a module used at several places is
            replaced once and stays shared).
        example_input: an input `model` accepts (a tensor, a tuple of positional arguments or a dict of
            keyword arguments); required when the model contains shuffles, to learn their channel counts
            in one eval-mode forward (forward pre-hooks). Its batch size does not matter.
        groups_from: "module" (each DynamicShuffle gets the replaced shuffle's groups: the converted
            model computes the same function) or an int G for every module (a different cross-group
            shuffle: the function changes).
        pointwise (or its alias `sds`): also replace every plain C -> C 1x1 convolution (kernel 1, stride
            1, no padding/dilation, groups 1) by a StaticDynamicShuffle with `pointwise_groups` groups
            (1 when C is not divisible by it), carrying the convolution's bias over. This CHANGES the
            function: the SDS's static part is a Kronecker-factored matrix, not the dense conv weight,
            so the model must be (re)trained afterwards.
        inplace: modify `model` itself; default False works on a deep copy and leaves `model` untouched.
        return_report: return `(model, replacements)` instead of the model alone.
        **dynamic_kwargs: passed to every DynamicShuffle / StaticDynamicShuffle (`hidden`, `temperature`,
            `share`, `factors`, `mode`, `initial_confidence`).

    Returns the converted model (same device and dtype), or `(model, list[Replacement])`. The replacements
    are also logged (logger `dynshuffle.deploy.conversion`, INFO). When nothing is found a warning says so: models
    that shuffle with a function call (torchvision's `channel_shuffle`) need a shuffle module first (see
    the module docstring).
    """
    if sds is not None:
        pointwise = pointwise or bool(sds)
    _check_convert_args(model, groups_from, pointwise_groups)
    if not inplace:
        model = copy.deepcopy(model)
    occurrences, modules = _find_targets(model, pointwise)
    shuffles = {key: m for key, m in modules.items() if is_fixed_shuffle(m)}
    channels = _shuffle_channels(model, shuffles, occurrences, example_input) if shuffles else {}

    report: list[Replacement] = []
    for key, module in modules.items():
        first = occurrences[key][0]
        shared = f"shared at {len(occurrences[key])} places" if len(occurrences[key]) > 1 else ""
        if key in shuffles:
            new, old, c, groups, changes, note = _dynamic_for_shuffle(
                module, first, channels[key], groups_from, example_input, dynamic_kwargs, shared)
        else:
            new, old, c, groups, changes, note = _sds_for_pointwise(module, pointwise_groups, dynamic_kwargs, shared)
        new.train(module.training)
        n = new.dynamic if isinstance(new, StaticDynamicShuffle) else new
        description = (f"{type(new).__name__}(channels={c}, groups={groups}, factors=({n.n1}, {n.n2}), "
                       f"hidden={n.hidden})")
        for name in occurrences[key]:
            _set_submodule(model, name, new)
        report.append(Replacement(first, old, description, c, groups, changes, note))

    if not report:
        warnings.warn("convert found no nn.ChannelShuffle / dynshuffle.ChannelShuffle module"
                      + (" and no equal-width 1x1 convolution" if pointwise else "")
                      + "; a model that shuffles with a function call (e.g. torchvision's channel_shuffle) "
                        "needs a shuffle module first (see dynshuffle.deploy.conversion)", stacklevel=2)
    for r in report:
        log.info("convert: %s: %s -> %s%s", r.name, r.old, r.new, f" ({r.note})" if r.note else "")
    return (model, report) if return_report else model


def _check_convert_args(model, groups_from, pointwise_groups) -> None:
    if not (groups_from == "module" or (isinstance(groups_from, int) and not isinstance(groups_from, bool)
                                         and groups_from >= 1)):
        raise ValueError(f"groups_from must be 'module' or a positive integer, got {groups_from!r}")
    if isinstance(pointwise_groups, bool) or not isinstance(pointwise_groups, int) or pointwise_groups < 1:
        raise ValueError(f"pointwise_groups must be a positive integer, got {pointwise_groups!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")


def _find_targets(model: nn.Module, pointwise: bool) -> tuple[dict[int, list[str]], dict[int, nn.Module]]:
    """Every module to replace, keyed by id, with all the names it occurs under (a shared module appears
    under several names; the first one labels it)."""
    occurrences: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name and (is_fixed_shuffle(module) or (pointwise and is_equal_width_pointwise(module))):
            occurrences.setdefault(id(module), []).append(name)
            modules[id(module)] = module
    return occurrences, modules


def _shuffle_channels(model: nn.Module, shuffles: dict[int, nn.Module], occurrences: dict[int, list[str]],
                      example_input) -> dict[int, int]:
    """Input channels of every fixed shuffle, from one forward with `example_input`; ValueError naming the
    shuffles when there is no input, a shuffle did not run, or it ran with different channel counts."""
    if example_input is None:
        names = ", ".join(occurrences[k][0] for k in shuffles)
        raise ValueError(f"convert needs example_input: the channel counts of the shuffles ({names}) are "
                         f"only known from a forward pass")
    channels = _record_channels(model, shuffles, example_input)
    unused = [occurrences[k][0] for k in shuffles if k not in channels]
    if unused:
        raise ValueError(f"these channel shuffles did not run in the forward with example_input, so their "
                         f"channel counts are unknown: {', '.join(unused)}")
    varying = [occurrences[k][0] for k in shuffles if channels[k] < 0]
    if varying:
        raise ValueError(f"these channel shuffles are called with different channel counts, so one "
                         f"DynamicShuffle cannot replace them: {', '.join(varying)}")
    return channels


def _dynamic_for_shuffle(module, first, c, groups_from, example_input, dynamic_kwargs, note):
    """(new DynamicShuffle, old description, channels, groups, changes the function, note)."""
    groups = module.groups if groups_from == "module" else groups_from
    if c % groups:
        raise ValueError(f"{first}: {c} channels are not divisible by groups_from={groups}")
    # Shuffles hold no tensors: the new module goes where the example input lives.
    new = DynamicShuffle(c, groups, **dynamic_kwargs).to(**_input_placement(example_input))
    old = f"{type(module).__name__}(groups={module.groups})"
    changes = groups != module.groups or dynamic_kwargs.get("mode") == "soft"
    return new, old, c, groups, changes, note


def _sds_for_pointwise(module, pointwise_groups, dynamic_kwargs, shared):
    """(new StaticDynamicShuffle carrying the conv's bias, old description, channels, groups, True, note)."""
    c = module.in_channels
    groups = pointwise_groups if c % pointwise_groups == 0 else 1
    new = StaticDynamicShuffle(c, groups, bias=module.bias is not None, **dynamic_kwargs)
    new = new.to(device=module.weight.device, dtype=module.weight.dtype)
    if module.bias is not None:
        with torch.no_grad():
            new.bias.copy_(module.bias.detach().to(new.bias.dtype))
    old = f"Conv2d({c}, {c}, kernel_size=1{', bias' if module.bias is not None else ''})"
    note = "; ".join(filter(None, [shared, f"groups 1 ({c} channels not divisible by {pointwise_groups})"
                                   if groups != pointwise_groups else ""]))
    return new, old, c, groups, True, note


def _input_placement(example_input) -> dict:
    """Device (and floating dtype) of the first tensor in `example_input`."""
    tensors = [example_input] if isinstance(example_input, torch.Tensor) else \
        list(example_input.values()) if isinstance(example_input, dict) else \
        list(example_input) if isinstance(example_input, (tuple, list)) else []
    for t in tensors:
        if isinstance(t, torch.Tensor):
            return {"device": t.device, **({"dtype": t.dtype} if t.is_floating_point() else {})}
    return {}
