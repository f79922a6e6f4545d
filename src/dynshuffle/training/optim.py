"""SGD with weight-decay exemptions, and per-iteration learning-rate schedules with linear warm-up."""
from __future__ import annotations

import math

import torch
from torch import nn

from dynshuffle.layers.base import shuffle_modules
from dynshuffle.layers.generator import ShuffleGenerator

OPTIMIZERS = ("sgd",)
LR_SCHEDULES = ("cosine", "linear", "step", "constant")

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def parameter_groups(model: nn.Module, weight_decay: float, exempt_norm_bias: bool = True,
                     generator_weight_decay: float | None = None,
                     generator_lr_scale: float | None = None) -> list[dict]:
    """The optimizer's parameter groups: parameters with weight decay, those without, and, when
    `generator_weight_decay` or `generator_lr_scale` is set, the shuffle generators' decayed weights with that
    decay (else the network's) and that multiple of the learning rate (`lr_scale`, applied by `set_lr`).

    With `exempt_norm_bias`, the exempt set is every parameter of a normalisation layer and every bias
    (any parameter of one dimension or fewer, or named `*bias`): this covers BatchNorm's affine weights,
    convolution/linear biases and the bias of the shuffle generator's logit heads, whose positive diagonal
    is what makes a fresh dynamic shuffle start as the fixed shuffle (decay would pull it to uniform),
    and the logits of a learned (input-independent) shuffle, which play the same role.
    `generator_weight_decay` gives the weights through which a generator's scores depend on the input (its
    linear layers) a decay of their own, since decay pulls the per-input part of the scores towards zero
    (docs/method.md §8.5 measures whether that matters); `generator_lr_scale` lets those weights move faster
    or slower than the network's. The last two groups are left out when empty.
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    # A learned (input-independent) shuffle's logits are its bias: the same role as the generator's
    # logit biases, so they are exempt too (they are the shuffle modules' own, non-child parameters).
    logits = {id(p) for m in shuffle_modules(model) for p in m.parameters(recurse=False)}
    own_group = generator_weight_decay is not None or generator_lr_scale is not None
    generators = set() if not own_group else \
        {id(p) for m in model.modules() if isinstance(m, ShuffleGenerator) for p in m.parameters()}
    decay, no_decay, generator = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = exempt_norm_bias and (p.ndim <= 1 or name.endswith("bias") or id(p) in norm_params
                                       or id(p) in logits)
        (no_decay if exempt else generator if id(p) in generators else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    groups += [{"params": no_decay, "weight_decay": 0.0}] if no_decay else []
    if generator:
        groups.append({"params": generator, "lr_scale": 1.0 if generator_lr_scale is None else generator_lr_scale,
                       "weight_decay": weight_decay if generator_weight_decay is None else generator_weight_decay})
    return groups


def build_optimizer(model: nn.Module, optim_cfg, lr: float) -> torch.optim.Optimizer:
    groups = parameter_groups(model, optim_cfg.weight_decay, optim_cfg.exempt_norm_bias,
                              optim_cfg.generator_weight_decay, optim_cfg.generator_lr_scale)
    if optim_cfg.name not in OPTIMIZERS:
        raise ValueError(f"config key 'optim.name': unknown optimizer {optim_cfg.name!r} (known: "
                         f"{', '.join(OPTIMIZERS)})")
    return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov,
                           weight_decay=optim_cfg.weight_decay)


class LRSchedule:
    """lr factor at iteration `step` (0-based): linear warm-up to 1, then cosine / linear / step / constant.

    The learning rate is a pure function of the step: `lr = peak * schedule(step)`, set on the optimizer's
    parameter groups before every step, so a resumed run needs only the step count (and a resumed run may
    change the schedule, the peak lr or the number of epochs).
    """

    def __init__(self, name: str, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0,
                 milestones: list[int] | None = None, gamma: float = 0.1):
        if name not in LR_SCHEDULES:
            raise ValueError(f"config key 'schedule.name': unknown schedule {name!r} (known: {', '.join(LR_SCHEDULES)})")
        self.name = name
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps))
        self.min_factor = float(min_factor)
        self.milestones = sorted(int(m) for m in (milestones or []))
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        if self.name == "cosine":
            return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.min_factor + (1.0 - self.min_factor) * (1.0 - t)  # linear


def build_lr_schedule(sched_cfg, epochs: int, steps_per_epoch: int) -> LRSchedule:
    """The per-iteration lr factor of the `schedule` config section over `epochs` x `steps_per_epoch`."""
    milestones = sched_cfg.milestones
    if milestones is None:
        milestones = [epochs // 2, (3 * epochs) // 4]
    return LRSchedule(sched_cfg.name, total_steps=epochs * steps_per_epoch,
                      warmup_steps=round(sched_cfg.warmup_epochs * steps_per_epoch),
                      min_factor=sched_cfg.min_lr_factor,
                      milestones=[m * steps_per_epoch for m in milestones], gamma=sched_cfg.gamma)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to `lr`, times the group's `lr_scale` where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def peak_lr(optim_cfg, global_batch: int) -> float:
    """The configured lr, scaled linearly by global batch / base_batch_size (when that is set)."""
    if optim_cfg.base_batch_size is None:
        return optim_cfg.lr
    return optim_cfg.lr * global_batch / optim_cfg.base_batch_size
