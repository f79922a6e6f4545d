"""Model registry (`create_model`, `list_models`, `register_model`) and checkpoint helpers.

A model built through the registry records `model.config`: its constructor arguments plus the registry
`name`, so `model_from_config(model.config)` (or a checkpoint that stores the config) rebuilds it.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a model factory under `name` (default: the function's name).

    Usable as `@register_model`, `@register_model(name="...")` or `register_model(fn, name="...")`.
    Registering a taken name raises ValueError (two factories under one name would make checkpoints
    ambiguous).
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or getattr(factory, "__name__", None)
        if not key or not isinstance(key, str):
            raise ValueError(f"register_model needs a name for {factory!r}")
        if key in _REGISTRY and _REGISTRY[key] is not factory:
            raise ValueError(f"a model named {key!r} is already registered")
        _REGISTRY[key] = factory
        return factory

    if fn is not None:
        return decorator(fn)
    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; `pattern` filters them with fnmatch (e.g. "shufflenet_v1_g3_*")."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def _unknown(name: Any) -> ValueError:
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `dynshuffle models` lists them"
    return ValueError(f"unknown model {name!r}{hint}")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model `name` with `kwargs` passed to its constructor.

    The result carries `model.config` (`name` plus the constructor arguments).
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise _unknown(name)
    model = factory(**kwargs)
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        config["name"] = name
    else:
        try:
            model.config = {"name": name, **kwargs}
        except (AttributeError, TypeError):  # a factory returning an object that takes no attributes
            pass
    return model


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from its recorded `config` (as stored in `model.config`)."""
    if "name" not in config:
        raise ValueError(f"a model config needs a 'name' key, got keys {sorted(config)}")
    kwargs = {k: v for k, v in config.items() if k not in ("name", "arch")}
    return create_model(config["name"], **kwargs)


def _parametric_shuffle_prefixes(model: nn.Module) -> list[str]:
    from ..layers import DynamicShuffle, LearnedShuffle, StaticDynamicShuffle

    kinds = (DynamicShuffle, LearnedShuffle, StaticDynamicShuffle)
    return [name + "." for name, m in model.named_modules() if name and isinstance(m, kinds)]


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], allow_missing_shuffle: bool = False) -> str:
    """Why `state` does not fit `model` (missing / unexpected keys, shape mismatches), or "" when it fits.

    `allow_missing_shuffle`: tensors under a DynamicShuffle / LearnedShuffle / StaticDynamicShuffle may be
    absent (a fixed-shuffle checkpoint loaded into a dynamic model).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if allow_missing_shuffle:
        prefixes = tuple(_parametric_shuffle_prefixes(model))
        missing = [k for k in missing if not k.startswith(prefixes)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        what = "missing keys (not part of a shuffle module)" if allow_missing_shuffle else "missing keys"
        problems.append(f"{what}: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_short(mismatched)}")
    return "; ".join(problems)


def load_compatible_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load `state_dict` into `model`, allowing only the model's shuffle-module tensors to be missing.

    This is how a fixed-shuffle checkpoint becomes the starting point of a learned or dynamic model of the
    same architecture: every convolution, BatchNorm and classifier tensor must match by name and shape;
    the tensors under a DynamicShuffle / LearnedShuffle / StaticDynamicShuffle (generator, logits,
    static factors) may be absent and then keep their fresh initialisation, which makes the module
    start as the fixed shuffle. Any other missing key, any unexpected key, or a shape mismatch raises
    ValueError naming the keys. A `module.` prefix (DataParallel/DDP) on every key is removed.
    """
    state = dict(state_dict)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    problems = state_dict_mismatch(model, state, allow_missing_shuffle=True)
    if problems:
        raise ValueError("state dict does not fit the model; " + problems)
    model.load_state_dict(state, strict=False)
    return model


def _short(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
