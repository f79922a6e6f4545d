"""ShuffleNet models with fixed, learned, dynamic or no channel shuffle, and the model registry.

- `registry`: `create_model`, `list_models`, `register_model`, `model_from_config`.
- `shufflenet_v1`, `shufflenet_v2`: the architectures, one registered function per variant.
- `blocks`: what both share (stems, the shuffle-slot factory `ShuffleOptions`, init, the lists of shuffle
  kinds, pointwise kinds and stems).

    create_model("shufflenet_v2_x1_0", shuffle="dynamic", stem="cifar", num_classes=10)
"""
from . import shufflenet_v1, shufflenet_v2  # noqa: F401  (importing them registers their models)
