"""ShuffleNet models with fixed, learned, dynamic or no channel shuffle, and the model registry.

`create_model("shufflenet_v2_x1_0", shuffle="dynamic", stem="cifar", num_classes=10)`;
`list_models("shufflenet_v1_*")`; `load_compatible_state_dict(dynamic_model, static_checkpoint)`.
"""
from __future__ import annotations

from ..checkpoints import load_compatible_state_dict  # re-exported: the home is dynshuffle.checkpoints
from .registry import create_model, list_models, model_from_config, register_model
from .shufflenet_v1 import ShuffleNetV1, ShuffleV1Unit, v1_supported
from .shufflenet_v2 import ShuffleNetV2, ShuffleV2Unit
from ._blocks import POINTWISE_KINDS, SHUFFLE_KINDS, STEM_INPUT_SIZE, STEMS

__all__ = [
    "create_model", "list_models", "register_model", "load_compatible_state_dict", "model_from_config",
    "ShuffleNetV1", "ShuffleV1Unit", "ShuffleNetV2", "ShuffleV2Unit", "v1_supported",
    "SHUFFLE_KINDS", "POINTWISE_KINDS", "STEMS", "STEM_INPUT_SIZE",
]
