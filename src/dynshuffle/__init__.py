"""dynshuffle: Dynamic Shuffle (arXiv 2310.02776) for PyTorch.

Layers that generate a data-dependent channel permutation per input (`DynamicShuffle`), its
input-independent control (`LearnedShuffle`), the static-dynamic shuffle that replaces a pointwise
convolution (`StaticDynamicShuffle`), ShuffleNet models built from them, and the tools to train,
profile, export and inspect them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names resolved on first use, so `import dynshuffle` stays light and the training, export
# and plotting stacks load only when asked for.
_LAZY = {
    "ChannelShuffle": "dynshuffle.layers",
    "DynamicShuffle": "dynshuffle.layers",
    "LearnedShuffle": "dynshuffle.layers",
    "StaticDynamicShuffle": "dynshuffle.layers",
    "orthogonality_loss": "dynshuffle.layers",
    "set_shuffle_mode": "dynshuffle.layers",
    "shuffle_modules": "dynshuffle.layers",
    "fuse_for_inference": "dynshuffle.layers",
    "shuffle_mode": "dynshuffle.modes",
    "deploy_mode": "dynshuffle.modes",
    "ShuffleSchedule": "dynshuffle.schedule",
    "run_routing": "dynshuffle.routing",
    "create_model": "dynshuffle.models",
    "list_models": "dynshuffle.models",
    "register_model": "dynshuffle.models",
    "load_compatible_state_dict": "dynshuffle.checkpoints",
    "time_interleaved": "dynshuffle.timing",
    "profile": "dynshuffle.profiling",
    "convert": "dynshuffle.conversion",
    "export_onnx": "dynshuffle.export",
    "permutation_stats": "dynshuffle.inspection",
}

__all__ = sorted(_LAZY) + ["functional", "__version__"]


def __getattr__(name: str):
    if name == "functional":
        return importlib.import_module("dynshuffle.functional")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dynshuffle' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
