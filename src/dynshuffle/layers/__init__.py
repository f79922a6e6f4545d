"""The layers: dynamic, learned and fixed channel shuffles, their maths, paths and training schedule.

- `functional`: the maths as plain functions on tensors (Kronecker apply, binarization, composition, penalty).
- `base`: `ShuffleModule`, the base of every learned or dynamic shuffle; `shuffle_modules(model)`; the sums
  of their orthogonality penalties and diversity rewards.
- `dynamic`: `DynamicShuffle`; `learned`: `LearnedShuffle`; `generator`: the generator of a dynamic shuffle.
- `channel_shuffle`: `ChannelShuffle`, ShuffleNet's fixed shuffle.
- `sds`: `StaticDynamicShuffle`, a pointwise-convolution replacement built around a dynamic shuffle.
- `fused`: the inference forms (`FusedDynamicShuffle`, `FusedLearnedShuffle`) and `fuse_for_inference`.
- `modes`: `set_shuffle_mode`, `shuffle_mode`, `deploy_mode`.
- `schedule`: `ShuffleSchedule`, the shuffle part of a training recipe for any training loop.

Every name is imported from the module that defines it; `dynshuffle` re-exports the main ones.
"""
