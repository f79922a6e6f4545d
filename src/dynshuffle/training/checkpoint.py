"""Checkpoint files of a training run: re-exported from `dynshuffle.checkpoints`, their one home."""
from __future__ import annotations

from dynshuffle.checkpoints import (  # noqa: F401
    CheckpointError,
    build_model_from_checkpoint,
    checkpoint_files,
    cpu_state_dict,
    load_checkpoint,
    load_compatible_state_dict,
    load_model_weights,
    load_state,
    load_weights,
    model_config_of,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
    state_dict_mismatch,
    unwrap,
)
