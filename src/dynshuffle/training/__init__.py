"""Training, evaluation and comparison of dynshuffle models.

    from dynshuffle.training import load_config, train, compare
    cfg = load_config("configs/digits_shufflenet_v2_x0_5_dynamic.yaml", ["train.epochs=4"])
    result = train(cfg, "runs/digits-dynamic")
    rows = compare(seeds=1, epochs=2)

See docs/training.md for the recipe keys, the run folder and multi-GPU use.
"""
from __future__ import annotations

from .checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint, save_checkpoint
from .compare import compare
from .config import Config, apply_overrides, load_config, save_config
from .distributed import CollectiveTimeoutError
from .evaluate import evaluate, evaluate_checkpoint, evaluate_modes, measure_latency
from .loop import NonFiniteLossError, RunFolderError, train
from .recipes import VARIANTS, recipe

__all__ = [
    "CheckpointError", "CollectiveTimeoutError", "Config", "NonFiniteLossError", "RunFolderError", "apply_overrides",
    "build_model_from_checkpoint", "compare", "evaluate", "evaluate_checkpoint", "evaluate_modes",
    "load_checkpoint", "load_config", "measure_latency", "recipe", "save_checkpoint", "save_config", "train",
    "VARIANTS",
]
