"""Switching the path of every shuffle module of a model: `set_shuffle_mode` for good, `shuffle_mode` for a
block of code, `deploy_mode` for the deployed model.

The paths (`base.SHUFFLE_MODES`): "auto" (soft matrices in training, the exact permutation in eval),
"soft", "ste" (straight-through: exact forward, soft gradients) and "frozen" (the exact permutation, and
no learning: no gradient to the generator, no penalty). See docs/design.md, "Three ways through the layer".
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .base import check_mode, shuffle_modules

__all__ = ["set_shuffle_mode", "shuffle_mode", "deploy_mode"]


def set_shuffle_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every shuffle module of `model` to `mode` ("auto", "soft", "ste", "frozen"); returns `model`."""
    check_mode(mode)
    for module in shuffle_modules(model):
        module.mode = mode
    return model


@contextlib.contextmanager
def shuffle_mode(model: nn.Module, mode: str, *, training: bool | None = None) -> Iterator[nn.Module]:
    """Every shuffle module of `model` in `mode` inside the block; on exit, even when the block raises, each
    module gets back its own mode and the penalties its last forward before the block recorded.

    `training`: also switch the whole model to train (True) or eval (False) inside the block; every
    submodule's own flag is restored on exit. None (default) leaves train/eval alone. Yields `model`.
    """
    check_mode(mode)
    saved = [(m, m.mode, m.orthogonality_penalty, m.diversity_reward) for m in shuffle_modules(model)]
    flags = [(m, m.training) for m in model.modules()] if training is not None else []
    try:
        if training is not None:
            model.train(training)
        for m, *_ in saved:
            m.mode = mode
        yield model
    finally:
        for m, old_mode, penalty, reward in saved:
            m.mode, m.orthogonality_penalty, m.diversity_reward = old_mode, penalty, reward
        for m, flag in flags:
            m.training = flag


def deploy_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """The deployed model inside the block: eval mode and every shuffle on its exact permutation ("frozen");
    everything is restored after (see `shuffle_mode`). Forwards inside it change nothing in the model."""
    return shuffle_mode(model, "frozen", training=False)
