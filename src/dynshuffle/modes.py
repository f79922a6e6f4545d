"""`shuffle_mode`: run a block of code with every shuffle module of a model on one path, then put back
each module's own mode (and, when asked, each module's train/eval flag), even when the block raises.

The paths (`dynshuffle.layers.SHUFFLE_MODES`): "auto" (soft matrices in training, the exact
permutation in eval), "soft", "ste" (straight-through: exact forward, soft gradients) and "hard" (the
exact permutation, as deployed). See docs/design.md, "Three ways through the layer".
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["shuffle_mode", "deploy_mode"]


@contextlib.contextmanager
def shuffle_mode(model: nn.Module, mode: str, *, training: bool | None = None) -> Iterator[nn.Module]:
    """Every learned/dynamic shuffle module of `model` in `mode` inside the block; restored on exit.

    `training`: also switch the whole model to train (True) or eval (False) inside the block; every
    submodule's own flag is restored on exit. None (default) leaves train/eval alone. Modules are
    restored one by one, so a model whose modules were in different modes gets each one back.
    Yields `model`.
    """
    from .layers import SHUFFLE_MODES, shuffle_modules

    if mode not in SHUFFLE_MODES:
        raise ValueError(f"shuffle mode must be one of {SHUFFLE_MODES}, got {mode!r}")
    modes = [(m, m.mode) for m in shuffle_modules(model)]
    flags = [(m, m.training) for m in model.modules()] if training is not None else []
    try:
        if training is not None:
            model.train(training)
        for m, _ in modes:
            m.mode = mode
        yield model
    finally:
        for m, old in modes:
            m.mode = old
        for m, flag in flags:
            m.training = flag


def deploy_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """The deployed model: eval mode and every shuffle on its exact-permutation path, restored after."""
    return shuffle_mode(model, "hard", training=False)
