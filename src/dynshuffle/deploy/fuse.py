"""`fuse_for_inference`: the inference form of a model, as a new module; the model itself stays trainable."""
from __future__ import annotations

import copy

from torch import nn

from dynshuffle.layers.base import ShuffleModule

__all__ = ["fuse_for_inference"]


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy of `model` in its inference form: every shuffle module replaced by its fused module
    (`ShuffleModule.fused()`: `FusedDynamicShuffle`, `FusedLearnedShuffle`; BatchNorm folded, one head), in
    eval mode. `model` is not changed and keeps training. The exact permutations are those of `model`
    (BatchNorm folding aside). A shuffle module used at several places stays shared in the copy."""
    model = copy.deepcopy(model)
    if isinstance(model, ShuffleModule):
        return model.fused().eval()
    model.eval()
    fused: dict[int, nn.Module] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if isinstance(module, ShuffleModule):
            if id(module) not in fused:
                fused[id(module)] = module.fused().eval()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, fused[id(module)])
    return model
