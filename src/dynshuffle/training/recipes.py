"""The experiment recipes: one training config per dataset, and the shuffle variants compared under it.

`configs/generate.py` writes them out as `configs/<dataset>_<model>_<variant>.yaml`; `dynshuffle compare`
starts from `recipe(data)`. Variants of one dataset differ only in `model.shuffle` / `model.pointwise`,
so a dynamic-shuffle result always sits next to a fixed-shuffle baseline trained identically.
"""
from __future__ import annotations

from .config import Config

# variant name -> model keys
VARIANTS: dict[str, dict] = {
    "static": {"shuffle": "static", "pointwise": "conv"},     # ShuffleNet's fixed channel shuffle
    "learned": {"shuffle": "learned", "pointwise": "conv"},   # one learned permutation for every input
    "dynamic": {"shuffle": "dynamic", "pointwise": "conv"},   # a permutation generated per input
    "sds": {"shuffle": "static", "pointwise": "sds"},         # static-dynamic shuffle instead of 1x1 convs
    "dynamic+sds": {"shuffle": "dynamic", "pointwise": "sds"},
    "none": {"shuffle": "none", "pointwise": "conv"},
}
DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "tiny-imagenet", "imagenet")


def recipe(dataset: str, model: str = "shufflenet_v2_x0_5", variant: str = "dynamic") -> Config:
    """The training config of `model` with `variant` on `dataset` (see docs/reproduce.md)."""
    cfg = Config()
    cfg.data.name = dataset
    cfg.optim.momentum, cfg.optim.exempt_norm_bias = 0.9, True
    if dataset == "digits":
        # The offline default of `dynshuffle compare`: 1437 training images; 4 variants x 3 seeds of these
        # 6 epochs take under 10 minutes on 2 CPU cores.
        # Batch 32 gives 44 steps per epoch: enough steps for the penalty to bring the soft matrices near
        # permutations (at batch 64 the soft path ends 17 points below the exact one, at 32 about 3).
        cfg.data.batch_size, cfg.data.workers = 32, 0
        cfg.optim.lr, cfg.optim.base_batch_size = 0.05, 32
        cfg.optim.nesterov, cfg.optim.weight_decay = True, 5e-4
        cfg.schedule.name, cfg.schedule.warmup_epochs = "cosine", 0.5
        cfg.train.epochs, cfg.train.label_smoothing = 6, 0.0
    elif dataset == "fashion-mnist":
        # The real benchmark of this machine (docs/method.md §8): 60 000 training and 10 000 test images,
        # 28x28. The "tiny" stem (3x3 conv + max-pool, 28 -> 14) puts the stages at 7, 4 and 2 pixels; on one
        # core it trains faster than the "cifar" stem (no pool) and reached the same top-1 at the same
        # cost (10 epochs against 4, ShuffleNetV1 g = 3 0.5x; docs/method.md §8.1). SGD at batch 128, lr 0.1
        # cosine with half an epoch of warm-up. Augmentation: random crop with 4-pixel zero padding and
        # horizontal flip (BatchTransform). The gradient norm is clipped at 5: without it ShuffleNetV1's
        # dynamic generator can diverge at the switch to straight-through, and the fixed model gains from
        # it too (docs/method.md §8.2, 3 seeds each).
        cfg.model.stem = "tiny"
        cfg.optim.grad_clip = 5.0
        cfg.data.batch_size, cfg.data.workers = 128, 0
        cfg.optim.lr, cfg.optim.base_batch_size = 0.1, 128
        cfg.optim.nesterov, cfg.optim.weight_decay = True, 5e-4
        cfg.schedule.name, cfg.schedule.warmup_epochs = "cosine", 0.5
        cfg.train.epochs, cfg.train.label_smoothing = 10, 0.0
    elif dataset in ("cifar10", "cifar100"):
        # 200 epochs, cosine, SGD lr 0.1 at batch 128 (scaled linearly with the batch), nesterov, wd 5e-4.
        cfg.data.batch_size, cfg.data.workers = 128, 4
        cfg.optim.lr, cfg.optim.base_batch_size = 0.1, 128
        cfg.optim.nesterov, cfg.optim.weight_decay = True, 5e-4
        cfg.schedule.name, cfg.schedule.warmup_epochs = "cosine", 0.0
        cfg.train.epochs, cfg.train.label_smoothing = 200, 0.0
    elif dataset == "tiny-imagenet":
        # 100k 64x64 images, 200 classes: 100 epochs cosine with a short warm-up, label smoothing 0.1.
        cfg.data.batch_size, cfg.data.workers = 256, 8
        cfg.optim.lr, cfg.optim.base_batch_size = 0.1, 128  # 0.2 at batch 256
        cfg.optim.nesterov, cfg.optim.weight_decay = True, 5e-4
        cfg.schedule.name, cfg.schedule.warmup_epochs = "cosine", 2.0
        cfg.train.epochs, cfg.train.label_smoothing = 100, 0.1
    elif dataset == "imagenet":
        # The official ShuffleNetV2 recipe (megvii ShuffleNet-Series): batch 1024, lr 0.5, linear decay to 0,
        # momentum 0.9, wd 4e-5 without biases and BN, label smoothing 0.1, 300k iterations
        # = 300000 * 1024 / 1281167 = 239.8 epochs -> 240.
        cfg.data.batch_size, cfg.data.workers = 1024, 10
        cfg.optim.lr, cfg.optim.base_batch_size = 0.5, 1024
        cfg.optim.nesterov, cfg.optim.weight_decay = False, 4e-5
        cfg.schedule.name, cfg.schedule.warmup_epochs = "linear", 0.0
        cfg.train.epochs, cfg.train.label_smoothing = 240, 0.1
    else:
        raise ValueError(f"no recipe for dataset {dataset!r}; recipes: {', '.join(DATASETS)}")
    # Dynamic-shuffle keys (fixed-shuffle variants ignore them): ShuffleSchedule's defaults, the penalty from
    # the first step (no penalty-free phase) and straight-through for the last 25 % (docs/method.md §7.3).
    cfg.model.name = model
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    for key, value in VARIANTS[variant].items():
        setattr(cfg.model, key, value)
    return cfg
