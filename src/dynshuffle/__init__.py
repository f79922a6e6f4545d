"""dynshuffle: Dynamic Shuffle (arXiv 2310.02776) for PyTorch.

Layers that generate a data-dependent channel permutation per input (`DynamicShuffle`), its
input-independent control (`LearnedShuffle`), the static-dynamic shuffle that replaces a pointwise
convolution (`StaticDynamicShuffle`), ShuffleNet models built from them, and the tools to train,
profile, export and inspect them. The subpackages (docs/design.md §11):

- `layers`: the shuffle modules, their maths (`layers.functional`), modes, fused form and schedule;
- `models`: ShuffleNetV1/V2 and the registry;        - `checkpoints`: checkpoint files and compatibility;
- `profiling`: counting, timing, benchmarks;         - `inspection`: statistics and pictures of a model;
- `deploy`: ONNX export and conversion;              - `data`: datasets and augmentation;
- `training`: config, loop, evaluation, comparison;  - `cli`, `commands`: the command line.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The headline API, resolved on first use so that `import dynshuffle` stays light and the training, export
# and plotting stacks load only when asked for. This is the only module that re-exports names: every other
# name is imported from the module that defines it (docs/design.md §11).
_LAZY = {
    "ChannelShuffle": "dynshuffle.layers.channel_shuffle",
    "DynamicShuffle": "dynshuffle.layers.dynamic",
    "LearnedShuffle": "dynshuffle.layers.learned",
    "StaticDynamicShuffle": "dynshuffle.layers.sds",
    "ShuffleModule": "dynshuffle.layers.base",
    "shuffle_modules": "dynshuffle.layers.base",
    "total_orthogonality_penalty": "dynshuffle.layers.base",
    "total_diversity_reward": "dynshuffle.layers.base",
    "fuse_for_inference": "dynshuffle.layers.fused",
    "set_shuffle_mode": "dynshuffle.layers.modes",
    "shuffle_mode": "dynshuffle.layers.modes",
    "deploy_mode": "dynshuffle.layers.modes",
    "ShuffleSchedule": "dynshuffle.layers.schedule",
    "create_model": "dynshuffle.models.registry",
    "list_models": "dynshuffle.models.registry",
    "register_model": "dynshuffle.models.registry",
    "load_compatible_state_dict": "dynshuffle.checkpoints",
    "profile": "dynshuffle.profiling.counting",
    "time_interleaved": "dynshuffle.profiling.timing",
    "run_routing": "dynshuffle.profiling.routing",
    "permutation_stats": "dynshuffle.inspection.stats",
    "export_onnx": "dynshuffle.deploy.export",
    "convert": "dynshuffle.deploy.conversion",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dynshuffle' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
