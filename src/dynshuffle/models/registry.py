"""Model registry: `create_model`, `list_models`, `register_model`, `model_from_config`.

A model built through the registry records `model.config`: its constructor arguments plus the registry
`name`, so `model_from_config(model.config)` (or a checkpoint that stores the config) rebuilds it.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["register_model", "list_models", "create_model", "model_from_config"]

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

